"""The ranking gate's EvalConfig (trainer/gate.py ranking_eval_config) through a real TFMA run, the
way TFX's Evaluator runs it: raw tf.Examples read with TFXIO (no schema), a candidate and a
baseline SavedModel each with the ``evaluate_examples`` signature (serialized examples in, one
score per head out), slices on the examples' user features, then the metrics and the validation
result read back as the report reads them.

The two "models" read their scores from the examples themselves, so every figure is known: the
candidate is exact for the M users and off by 1.8 for the F users (RMSE 0 / 1.8, overall 1.27),
the baseline says 3 everywhere (RMSE 1.41 on every slice); the engagement scores separate the
classes for the candidate (AUC 1) and not for the baseline (AUC 0.5). Takes ~30 s.
"""

from __future__ import annotations

import html

import pytest

from serving import names
from trainer.hparams import GateConfig

N = 200  # examples: gender alternates (100 F, 100 M), occupation cycles a / b / c, rating 1..5 by 5
F_ERROR = 1.8
GATE = GateConfig(max_rmse=1.5, max_rmse_increase=0.02, min_auc=0.6, max_auc_drop=0.01)


def _examples(path: str) -> None:
    import tensorflow as tf

    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))

    with tf.io.TFRecordWriter(path) as w:
        for i in range(N):
            gender = b"F" if i % 2 else b"M"
            rating = float(i % 5 + 1)
            engaged = int(rating >= 4)
            row = {"user_id": f"u{i % 17}".encode(), "user_gender": gender, "user_occupation": b"abc"[i % 3:i % 3 + 1],
                   "user_age": float(20 + i % 40), "rating": rating, "engaged": engaged,
                   # the candidate's and the baseline's scores (the models below read them)
                   "c_rating": rating + (F_ERROR if gender == b"F" else 0.0) * (1 if i % 4 == 1 else -1),
                   "c_engagement": 0.8 if engaged else 0.2, "b_rating": 3.0, "b_engagement": 0.5}
            w.write(tf.train.Example(features=tf.train.Features(
                feature={k: feature(v) for k, v in row.items()})).SerializeToString())


def _model(export_dir: str, prefix: str) -> str:
    """A SavedModel whose evaluate_examples signature scores each example with its ``prefix``* features."""
    import tensorflow as tf

    spec = {prefix + head: tf.io.FixedLenFeature([1], tf.float32) for head in ("rating", "engagement")}
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, names.EXAMPLES_INPUT)])
    def evaluate(examples):
        parsed = tf.io.parse_example(examples, spec)
        return {names.OUT_RATING: tf.reshape(parsed[prefix + "rating"], [-1]),
                names.OUT_ENGAGEMENT: tf.reshape(parsed[prefix + "engagement"], [-1])}

    module.evaluate = evaluate
    tf.saved_model.save(module, export_dir, signatures={names.EVAL_SIGNATURE: evaluate})
    return export_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking_tfma")
    path = str(root / "eval.tfrecord")
    _examples(path)
    return root, path, {"candidate": _model(str(root / "candidate"), "c_"),
                        "baseline": _model(str(root / "baseline"), "b_")}


def _evaluate(data, eval_config, out: str, with_baseline: bool = True):
    """What TFX's Evaluator executor does with the config: complete it, load the models, run TFMA."""
    import apache_beam as beam
    import tensorflow_model_analysis as tfma
    from tfx_bsl.tfxio import tf_example_record

    _, path, models = data
    eval_config = tfma.utils.update_eval_config_with_defaults(eval_config, has_baseline=with_baseline,
                                                             rubber_stamp=True)
    tfma.utils.verify_eval_config(eval_config)
    shared = [tfma.default_eval_shared_model(eval_saved_model_path=models[spec.name or "candidate"],
                                             model_name=spec.name, eval_config=eval_config)
              for spec in eval_config.model_specs]
    with beam.Pipeline() as p:
        _ = (p | tf_example_record.TFExampleRecord(file_pattern=path,
                                                   raw_record_column_name=tfma.ARROW_INPUT_COLUMN).BeamSource()
               | tfma.ExtractEvaluateAndWriteResults(eval_shared_model=shared[0] if len(shared) == 1 else shared,
                                                     eval_config=eval_config, output_path=out))
    return tfma.load_validation_result(out)


def _by_slice(rows: list[dict]) -> dict:
    return {(r["feature"], r["value"]): r for r in rows}


def test_slices_are_reported_and_only_the_overall_slice_is_gated(data, tmp_path):
    from trainer.gate import ranking_eval_config
    from trainer.report import load_ranking_slices, write_report

    out = str(tmp_path / "evaluation")
    validation = _evaluate(data, ranking_eval_config(GATE, ["user_gender", "user_occupation"]), out)
    rows = load_ranking_slices(out)
    got = _by_slice(rows)
    assert list(got) == [(None, None), ("user_gender", "F"), ("user_gender", "M"), ("user_occupation", "a"),
                         ("user_occupation", "b"), ("user_occupation", "c")]
    assert [got[k]["examples"] for k in got] == [N, 100, 100, 67, 67, 66]
    assert got[("user_gender", "M")]["rmse"] == pytest.approx(0.0, abs=1e-6)
    assert got[("user_gender", "F")]["rmse"] == pytest.approx(F_ERROR, rel=1e-5)
    overall = got[(None, None)]
    assert overall["rmse"] == pytest.approx((F_ERROR ** 2 / 2) ** 0.5, rel=1e-5)
    assert overall["auc"] == pytest.approx(1.0, abs=1e-3)
    # The F slice breaks both RMSE thresholds (1.8 > 1.5; +0.39 over the baseline's 1.41), the overall
    # slice clears them (1.27; -0.14): blessed, and the one checked slice is the overall one.
    assert validation.validation_ok, validation
    assert [(list(d.slicing_spec.feature_keys), d.num_matching_slices)
            for d in validation.validation_details.slicing_details] == [([], 1)]

    # The report's table, from the same artifact.
    text = open(write_report(str(tmp_path / "report"), None, None, None, ranking_evaluation=out)).read()
    assert "| overall (gated) |  | 200 | 1.2728 | 1.0000 |" in text
    assert "| user_gender | F | 100 | 1.8000 | 1.0000 |" in text
    assert "| user_occupation | c | 66 |" in text


def test_a_threshold_without_a_slice_would_gate_every_slice(data, tmp_path):
    """Why the thresholds are per-slice ones: TFMA checks a MetricConfig.threshold on every slice."""
    from trainer.gate import ranking_eval_config

    cfg = ranking_eval_config(GATE, ["user_gender"])
    for spec in cfg.metrics_specs:
        for metric in spec.metrics:
            if metric.per_slice_thresholds:
                metric.threshold.CopyFrom(metric.per_slice_thresholds[0].threshold)
                del metric.per_slice_thresholds[:]
    validation = _evaluate(data, cfg, str(tmp_path / "evaluation"))
    assert not validation.validation_ok
    failed = {tuple((k.column, k.bytes_value) for k in v.slice_key.single_slice_keys): sorted(
        (f.metric_key.name, f.metric_key.is_diff) for f in v.failures) for v in validation.metric_validations_per_slice}
    assert failed == {(("user_gender", b"F"),): [("root_mean_squared_error", False),
                                                  ("root_mean_squared_error", True)]}
    # The same failures in words, as the run summary and the report give them (trainer/gate.py).
    from trainer.gate import ranking_gate_reasons

    assert sorted(ranking_gate_reasons(str(tmp_path / "evaluation"))) == [
        "RMSE (rating) change vs the latest blessed model, user_gender=F: +0.3858, allowed <= +0.02 "
        "(trainer.gate.max_rmse_increase)",
        "RMSE (rating), user_gender=F: 1.8000 > 1.5 (upper bound) (trainer.gate.max_rmse)"]


def test_the_overall_slice_still_gates_and_a_first_model_has_no_change_threshold(data, tmp_path, capsys):
    from tfx_pipeline import component_ids as ids
    from tfx_pipeline.config import load_config
    from tfx_pipeline.summary import print_summary
    from trainer.gate import ranking_eval_config, ranking_gate_reasons
    from trainer.report import load_ranking_slices

    # RMSE 1.27 over a 1.2 ceiling: not blessed, on the overall slice alone (F's 1.8 is not a failure).
    # Written where the Evaluator writes in a run: its evaluation artifact, beside its blessing marker.
    cfg = load_config("configs/implicit_demo.yaml", {"pipeline_root": str(tmp_path / "run"),
                                                      "serving_base_path": str(tmp_path / "serving")})
    gate_dir = cfg.root / "artifacts" / ids.RANKING_GATE
    strict = GateConfig(max_rmse=1.2, max_rmse_increase=0.02, min_auc=0.6, max_auc_drop=0.01)
    validation = _evaluate(data, ranking_eval_config(strict, ["user_gender"]), str(gate_dir / "evaluation" / "5"))
    assert not validation.validation_ok
    assert [list(v.slice_key.single_slice_keys) for v in validation.metric_validations_per_slice] == [[]]
    (failure,) = validation.metric_validations_per_slice[0].failures
    assert (failure.metric_key.name, failure.metric_key.is_diff) == ("root_mean_squared_error", False)

    # The run summary and the report say which threshold failed, on which slice, value vs bound: the
    # Evaluator's blessing is an empty NOT_BLESSED file, the reasons come from its validation result.
    (gate_dir / "blessing" / "6").mkdir(parents=True)
    (gate_dir / "blessing" / "6" / "NOT_BLESSED").write_text("")
    (cfg.root / "artifacts" / ids.RANKING_TRAINER / "model_run" / "4").mkdir(parents=True)
    reason = "RMSE (rating), overall slice: 1.2728 > 1.2 (upper bound) (trainer.gate.max_rmse)"
    out = print_summary(cfg)
    assert out["gates"][ids.RANKING_GATE]["reasons"] == [reason]
    assert f"[gate] {ids.RANKING_GATE}: NOT BLESSED" in capsys.readouterr().out
    assert f"| {ids.RANKING_GATE} | NOT BLESSED | {reason} |" in open(out["report"]).read()
    page = open(out["report_html"]).read()
    assert '<td class="bad">NOT BLESSED</td>' in page and html.escape(reason) in page

    # No blessed model yet: TFX drops the baseline and the change thresholds; the one model is named "".
    out = str(tmp_path / "first")
    assert _evaluate(data, ranking_eval_config(GATE, ["user_gender"]), out, with_baseline=False).validation_ok
    got = _by_slice(load_ranking_slices(out))
    assert got[("user_gender", "F")]["examples"] == 100 and got[("user_gender", "F")]["rmse"] == pytest.approx(F_ERROR)
    assert ranking_gate_reasons(out) == ["every TFMA threshold met"]
