"""Both gate outcomes, on hand-made metrics."""

from trainer.gate import decide
from trainer.hparams import GateConfig, trainer_config
from trainer.typed_config import ConfigError

import pytest


def _retrieval(r100, pop=0.3, als=0.2, ndcg=0.2, als_ndcg=0.1):
    """Hand-made retrieval metrics.json; ``als=None``: one written before the ALS baseline existed."""
    m = {"model": {"recall@100": r100, "ndcg@10": ndcg}, "popularity": {"recall@100": pop}}
    if als is not None:
        m["als"] = {"recall@100": als, "ndcg@10": als_ndcg}
    return m


def test_first_retrieval_model_above_popularity_is_blessed():
    d = decide("retrieval", _retrieval(0.4), None, GateConfig())
    assert d["blessed"] and not d["has_baseline"]


def test_retrieval_below_popularity_is_rejected():
    d = decide("retrieval", _retrieval(0.25), None, GateConfig())
    assert not d["blessed"] and "lift_over_popularity" in d["reasons"][0]


def test_retrieval_regression_against_latest_blessed_is_rejected():
    d = decide("retrieval", _retrieval(0.40), _retrieval(0.45), GateConfig(max_recall_drop=0.01))
    assert not d["blessed"] and "latest blessed 0.4500" in " ".join(d["reasons"])
    assert decide("retrieval", _retrieval(0.445), _retrieval(0.45), GateConfig(max_recall_drop=0.01))["blessed"]


def test_model_that_loses_to_als_is_not_blessed_and_the_reason_says_so():
    # Beats popularity (0.3) but not ALS on Recall@100.
    d = decide("retrieval", _retrieval(0.2470, als=0.2510), None, GateConfig())
    assert not d["blessed"]
    assert not d["checks"]["lift_over_baseline_recall_at_100"]["ok"]
    assert d["checks"]["lift_over_baseline_ndcg_at_10"]["ok"]
    assert ("lift_over_baseline_recall_at_100: recall@100 0.2470 < 1.0 x ALS 0.2510: "
            "the model loses to the ALS baseline") in d["reasons"]
    # Losing on NDCG@10 alone is enough to be refused too.
    d = decide("retrieval", _retrieval(0.40, als=0.30, ndcg=0.15, als_ndcg=0.16), None, GateConfig())
    assert not d["blessed"] and [r for r in d["reasons"] if r.startswith("lift_over_baseline_ndcg_at_10")] == [
        "lift_over_baseline_ndcg_at_10: NDCG@10 0.1500 < 1.0 x ALS 0.1600: the model loses to the ALS baseline"]


def test_model_that_beats_als_is_blessed_and_the_factor_applies():
    d = decide("retrieval", _retrieval(0.40, als=0.35, ndcg=0.20, als_ndcg=0.18), None, GateConfig())
    assert d["blessed"], d
    assert d["checks"]["lift_over_baseline_recall_at_100"]["ok"] and d["checks"]["lift_over_baseline_ndcg_at_10"]["ok"]
    # 0.40 < 1.2 x 0.35: a required lift of 1.2 refuses it; 0 turns the check off altogether.
    assert not decide("retrieval", _retrieval(0.40, als=0.35, ndcg=0.20, als_ndcg=0.1),
                      None, GateConfig(min_lift_over_baseline=1.2))["blessed"]
    off = decide("retrieval", _retrieval(0.40, als=0.9, ndcg=0.2, als_ndcg=0.9), None,
                 GateConfig(min_lift_over_baseline=0.0))
    assert off["blessed"] and not any("baseline" in name for name in off["checks"])


def test_unavailable_baseline_fails_the_gate_plainly_and_disabled_is_noted():
    failed = _retrieval(0.40)
    failed["als"] = {"unavailable": "als could not be fit: ValueError: no train interaction", "disabled": False}
    d = decide("retrieval", failed, None, GateConfig())
    assert not d["blessed"] and all("baseline unavailable (als could not be fit" in r
                                    for r in d["reasons"] if r.startswith("lift_over_baseline"))
    # metrics.json of a model trained before the baseline existed: no "als" at all.
    d = decide("retrieval", _retrieval(0.40, als=None), None, GateConfig())
    assert not d["blessed"] and "baseline unavailable (metrics.json has no ALS entry" in " ".join(d["reasons"])
    assert decide("retrieval", _retrieval(0.40, als=None), None, GateConfig(min_lift_over_baseline=0))["blessed"]
    # Disabled on purpose (trainer.baseline.enabled: false): blessed, and the reasons say it was not checked.
    disabled = _retrieval(0.40)
    disabled["als"] = {"unavailable": "disabled by trainer.baseline.enabled: false", "disabled": True}
    d = decide("retrieval", disabled, None, GateConfig())
    assert d["blessed"] and d["checks"]["lift_over_baseline"]["skipped"]
    assert "lift_over_baseline: not checked: baseline unavailable (disabled by trainer.baseline.enabled: false)" \
        in d["reasons"]


def test_latest_blessed_metrics_without_als_are_still_a_baseline():
    d = decide("retrieval", _retrieval(0.40), _retrieval(0.45, als=None), GateConfig(max_recall_drop=0.01))
    assert not d["blessed"] and "latest blessed 0.4500" in " ".join(d["reasons"])
    assert decide("retrieval", _retrieval(0.445), _retrieval(0.45, als=None), GateConfig(max_recall_drop=0.01))["blessed"]


def _overall_threshold(metric):
    """A ranking MetricConfig's one threshold, checked to be on the overall slice alone."""
    import tensorflow_model_analysis as tfma

    # MetricConfig.threshold would gate every slice; per_slice_thresholds on SlicingSpec() gates the overall one.
    assert not metric.HasField("threshold")
    (per_slice,) = metric.per_slice_thresholds
    assert list(per_slice.slicing_specs) == [tfma.SlicingSpec()]
    return per_slice.threshold


def test_ranking_eval_config_carries_the_gate_thresholds():
    from serving import names
    from trainer.gate import ranking_eval_config

    cfg = ranking_eval_config(GateConfig(min_auc=0.6, max_rmse=1.2, max_auc_drop=0.02, max_rmse_increase=0.05))
    assert [m.signature_name for m in cfg.model_specs] == [names.EVAL_SIGNATURE] * 2
    assert [m.is_baseline for m in cfg.model_specs] == [False, True]
    by_output = {tuple(s.output_names): s.metrics[0] for s in cfg.metrics_specs if s.output_names}
    auc = _overall_threshold(by_output[(names.OUT_ENGAGEMENT,)])
    rmse = _overall_threshold(by_output[(names.OUT_RATING,)])
    assert auc.value_threshold.lower_bound.value == 0.6 and auc.change_threshold.absolute.value == -0.02
    assert rmse.value_threshold.upper_bound.value == 1.2 and rmse.change_threshold.absolute.value == 0.05
    # Called as before (no slice features): the overall slice only.
    assert [list(s.feature_keys) for s in cfg.slicing_specs] == [[]]


def test_ranking_eval_config_slices_by_user_features_and_gates_the_overall_slice_only():
    import tensorflow_model_analysis as tfma
    from tfx.utils import proto_utils

    from trainer.gate import ranking_eval_config

    cfg = ranking_eval_config(GateConfig(min_auc=0.6, max_rmse=1.2), ["user_gender", "user_occupation"])
    assert [list(s.feature_keys) for s in cfg.slicing_specs] == [[], ["user_gender"], ["user_occupation"]]
    # Every threshold TFMA's validator will check is tied to the overall slice (none without a slicing spec,
    # which it would apply to each slice), for the value and change thresholds of RMSE and AUC.
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(cfg.metrics_specs, eval_config=cfg)
    # (the value thresholds, and the change thresholds on the diff keys)
    assert sorted((key.name, key.is_diff) for key in thresholds) == [
        ("auc", False), ("auc", True), ("root_mean_squared_error", False), ("root_mean_squared_error", True)]
    assert all(spec == tfma.SlicingSpec() for pairs in thresholds.values() for spec, _ in pairs)
    # ExampleCount (each slice's size) is reported, not gated.
    counted = [m for s in cfg.metrics_specs for m in s.metrics if m.class_name == "ExampleCount"]
    assert len(counted) == 1 and not counted[0].per_slice_thresholds and not counted[0].HasField("threshold")
    # The Evaluator gets the config as JSON (an execution property) and completes it: the empty slicing
    # spec survives the round trip, and without a blessed model the change thresholds go, the values stay.
    back = proto_utils.json_to_proto(proto_utils.proto_to_json(cfg), tfma.EvalConfig())
    assert back == cfg
    first = tfma.utils.update_eval_config_with_defaults(back, has_baseline=False, rubber_stamp=True)
    tfma.utils.verify_eval_config(first)
    assert [m.name for m in first.model_specs] == [""]
    gated = [_overall_threshold(s.metrics[0]) for s in first.metrics_specs if s.output_names]
    assert [t.HasField("change_threshold") for t in gated] == [False, False]
    assert [t.HasField("value_threshold") for t in gated] == [True, True]


USER_KINDS = {"user_age": "numeric", "user_gender": "categorical", "user_occupation": "categorical",
              "user_zip_prefix": "categorical"}
DOMAINS = {"user_gender": 2, "user_occupation": 21, "item_genres": 19}  # the curated schema's closed domains


def test_ranking_slice_features_follow_the_evaluation_config_and_the_schema():
    from trainer.gate import ranking_slice_features
    from trainer.hparams import EvaluationConfig

    # "*": the categorical features with a closed domain of at most max_groups values; never a numeric
    # one (one slice per distinct value), nor one without a closed domain (the zip prefix).
    assert ranking_slice_features(EvaluationConfig(), USER_KINDS, DOMAINS) == ["user_gender", "user_occupation"]
    assert ranking_slice_features(EvaluationConfig(max_groups=20), USER_KINDS, DOMAINS) == ["user_gender"]
    assert ranking_slice_features(EvaluationConfig(), USER_KINDS, None) == []  # no schema yet
    # Named: each categorical one, whatever its size, in the order named; numeric ones are left out.
    named = EvaluationConfig(user_features=("zip_prefix", "age", "user_gender"))
    assert ranking_slice_features(named, USER_KINDS, DOMAINS) == ["user_zip_prefix", "user_gender"]
    assert ranking_slice_features(EvaluationConfig(user_features=()), USER_KINDS, DOMAINS) == []
    assert ranking_slice_features(EvaluationConfig(enabled=False), USER_KINDS, DOMAINS) == []
    assert ranking_slice_features(EvaluationConfig(), {}, DOMAINS) == []  # a dataset without user features
    with pytest.raises(ValueError, match="'height' is not a categorical or numeric user feature"):
        ranking_slice_features(EvaluationConfig(user_features=("height",)), USER_KINDS, DOMAINS)


def test_string_domain_sizes_read_the_curated_schema(tmp_path):
    from tfx_pipeline.data.schema_tools import string_domain_sizes

    sizes = string_domain_sizes("schemas/movielens_100k/schema.pbtxt")
    assert sizes["user_gender"] == 2 and sizes["user_occupation"] == 21
    assert "user_zip_prefix" not in sizes and "user_age" not in sizes and "user_id" not in sizes
    assert string_domain_sizes(tmp_path / "schema.pbtxt") == {}


def test_ranking_gate_slices_by_the_datasets_small_categorical_user_features(tmp_path):
    import json

    import tensorflow_model_analysis as tfma
    from tfx.utils import proto_utils

    from tfx_pipeline.config import load_config
    from tfx_pipeline.wiring.pipeline import create_pipeline

    def slices(evaluation: dict) -> list:
        cfg = load_config("configs/movielens_100k.yaml", {"pipeline_root": str(tmp_path / "run"),
                                                          "serving_base_path": str(tmp_path / "serving"),
                                                          "trainer": {"evaluation": evaluation}})
        gate = {c.id: c for c in create_pipeline(cfg, fingerprint_inputs=False).components}["RankingGate"]
        eval_config = proto_utils.json_to_proto(json.loads(json.dumps(gate.exec_properties["eval_config"])),
                                                tfma.EvalConfig())
        return [list(s.feature_keys) for s in eval_config.slicing_specs]

    # MovieLens users: age (numeric), gender (2), occupation (21), zip prefix (no closed domain).
    assert slices({}) == [[], ["user_gender"], ["user_occupation"]]
    assert slices({"user_features": ["zip_prefix"]}) == [[], ["user_zip_prefix"]]


def test_trainer_config_is_strict():
    assert trainer_config({"retrieval": {"epochs": 2}}).retrieval.epochs == 2
    with pytest.raises(ValueError, match="unknown key"):
        trainer_config({"retrieval": {"epoch": 2}})
    with pytest.raises(ValueError, match="expected an integer"):
        trainer_config({"ranking": {"epochs": "two"}})
    cfg = trainer_config({"baseline": {"factors": 8, "enabled": False}, "gate": {"min_lift_over_baseline": 1.1}})
    assert (cfg.baseline.factors, cfg.baseline.enabled, cfg.gate.min_lift_over_baseline) == (8, False, 1.1)
    with pytest.raises(ValueError, match=r"trainer.baseline: unknown key\(s\) \['factor'\]"):
        trainer_config({"baseline": {"factor": 8}})
    with pytest.raises(ValueError, match="kind must be one of"):
        trainer_config({"baseline": {"kind": "bpr"}})


# --- The slice checks (max_cold_user_recall_drop, max_group_recall_ratio) -----------------------

def _sliced(r100, cold=None, groups=None, min_group_users=10, ks=(10, 100), threshold=3):
    """``_retrieval`` plus a ``"slices"`` section shaped like slices.run_analysis writes it: the
    user_activity slice (cold users' Recall@100 ``cold``; None: no cold user) and, per feature in
    ``groups`` ({feature: {group: (num_users, recall)}}), a user_feature slice with every K at
    that recall and its fairness from slices.fairness itself."""
    from trainer.retrieval.slices import fairness

    def entry(n, recall):
        return {"num_users": n, "model": {f"recall@{k}": recall for k in ks},
                "popularity": {f"recall@{k}": 0.1 for k in ks}} if n else {"num_users": 0}

    m = _retrieval(r100)
    m["slices"] = {"user_activity": {"threshold": threshold, "rule": f"cold: <= {threshold} train events (configured); "
                                                                    f"warm: the rest",
                                     "groups": {"cold": entry(12 if cold is not None else 0, cold),
                                                "warm": entry(30, r100)}}}
    for feature, by_group in (groups or {}).items():
        g = {name: entry(n, recall) for name, (n, recall) in by_group.items()}
        m["slices"][f"user_feature:{feature}"] = {
            "groups": g, "fairness": fairness(g, ["model", "popularity"], ks, min_group_users),
            "min_group_users": min_group_users}
    return m


def test_slice_checks_are_off_by_default():
    # Cold users down from 0.30 to 0.05 and a worst group at a fifth of the best: no check runs.
    current = _sliced(0.40, cold=0.05, groups={"user_gender": {"F": (20, 0.1), "M": (20, 0.5)}})
    d = decide("retrieval", current, _sliced(0.40, cold=0.30), GateConfig())
    assert d["blessed"], d
    assert not any(n.startswith(("cold_user", "group_fairness")) for n in d["checks"])
    assert d["reasons"] == ["all checks passed"]


def test_cold_user_recall_drop_passes_and_fails_with_the_numbers():
    gate = GateConfig(max_cold_user_recall_drop=0.02)
    # 0.20 -> 0.19: a drop of 0.01 <= 0.02.
    d = decide("retrieval", _sliced(0.40, cold=0.19), _sliced(0.40, cold=0.20), gate)
    assert d["blessed"] and d["checks"]["cold_user_no_regression"]["ok"], d
    # 0.20 -> 0.15: a drop of 0.05 > 0.02, though the overall Recall@100 held.
    d = decide("retrieval", _sliced(0.40, cold=0.15), _sliced(0.40, cold=0.20, threshold=4), gate)
    assert not d["blessed"] and d["checks"]["no_regression"]["ok"]
    assert d["reasons"] == [
        "cold_user_no_regression: cold-user recall@100 0.1500 vs latest blessed 0.2000: dropped 0.0500 > "
        "max_cold_user_recall_drop 0.02 (cold users: <= 3 train events, 12 users; latest blessed: <= 4, 12 users); "
        "raise trainer.gate.max_cold_user_recall_drop, or -1 to turn the check off"]
    # 0 allows no drop at all; an improvement always passes.
    assert not decide("retrieval", _sliced(0.40, cold=0.1999), _sliced(0.40, cold=0.20),
                      GateConfig(max_cold_user_recall_drop=0.0))["blessed"]
    assert decide("retrieval", _sliced(0.40, cold=0.25), _sliced(0.40, cold=0.20),
                  GateConfig(max_cold_user_recall_drop=0.0))["blessed"]


def test_cold_user_check_is_skipped_with_a_note_when_there_is_nothing_to_compare():
    gate = GateConfig(max_cold_user_recall_drop=0.0)
    # First model: no blessed model.
    d = decide("retrieval", _sliced(0.40, cold=0.05), None, gate)
    assert d["blessed"] and d["checks"]["cold_user_no_regression"]["skipped"]
    assert "cold_user_no_regression: not checked: no blessed model to compare the cold users' Recall@100 with" \
        in d["reasons"]
    # This model's metrics.json has no slices (trainer.evaluation.enabled: false).
    d = decide("retrieval", _retrieval(0.40), _sliced(0.40, cold=0.30), gate)
    assert d["blessed"] and d["checks"]["cold_user_no_regression"]["skipped"]
    assert ("cold_user_no_regression: not checked: this model's metrics.json has no cold-user Recall@100 (no slices "
            "(trainer.evaluation.enabled: false, or written before the slices existed))") in d["reasons"]
    # The latest blessed model's has none (written before the slices existed).
    d = decide("retrieval", _sliced(0.40, cold=0.05), _retrieval(0.40), gate)
    assert d["blessed"] and any(r.startswith("cold_user_no_regression: not checked: the latest blessed model's "
                                             "metrics.json has no cold-user Recall@100 (no slices")
                                for r in d["reasons"])
    # A cold group without users ({"num_users": 0}, as slices.analyse writes it) is no slice either.
    d = decide("retrieval", _sliced(0.40, cold=None), _sliced(0.40, cold=0.30), gate)
    assert d["blessed"] and "this model's metrics.json has no cold-user Recall@100 (no cold user in its eval set)" \
        in d["checks"]["cold_user_no_regression"]["detail"]
    # A skipped check does not hide a failing one.
    d = decide("retrieval", _sliced(0.25, cold=0.05), None, gate)
    assert not d["blessed"] and d["reasons"][0].startswith("lift_over_popularity")


def test_group_recall_ratio_passes_and_fails_per_feature():
    groups = {"user_gender": {"F": (20, 0.30), "M": (25, 0.36)},          # 0.36 / 0.30 = 1.20
              "user_age": {"18": (15, 0.20), "35": (40, 0.40), "56": (3, 0.01)}}  # 56: 3 users, left out: 2.00
    d = decide("retrieval", _sliced(0.40, groups=groups), None, GateConfig(max_group_recall_ratio=1.5))
    assert not d["blessed"]
    assert d["checks"]["group_fairness_user_gender"] == {
        "ok": True, "detail": "Recall@100 of user_gender: best M 0.3600 (25 users) / worst F 0.3000 (20 users) = 1.20 "
                              "<= 1.5 (groups of >= 10 users)"}
    assert d["reasons"] == [
        "group_fairness_user_age: Recall@100 of user_age: best 35 0.4000 (40 users) / worst 18 0.2000 (15 users) = "
        "2.00 > max_group_recall_ratio 1.5 (groups of >= 10 users); raise trainer.gate.max_group_recall_ratio, "
        "or 0 to turn the check off"]
    assert decide("retrieval", _sliced(0.40, groups=groups), None, GateConfig(max_group_recall_ratio=2.0))["blessed"]
    # Without Recall@100 in the fairness entry, its largest K, named in the detail.
    d = decide("retrieval", _sliced(0.40, groups=groups, ks=(10, 50)), None, GateConfig(max_group_recall_ratio=2.0))
    assert d["blessed"] and d["checks"]["group_fairness_user_age"]["detail"].startswith("Recall@50 of user_age:")


def test_group_recall_ratio_with_a_zero_recall_group():
    gate = GateConfig(max_group_recall_ratio=3.0)
    # A worst group of 12 users (>= min_group_users) with recall 0: no finite ratio, fails.
    d = decide("retrieval", _sliced(0.40, groups={"user_gender": {"F": (12, 0.0), "M": (30, 0.4)}}), None, gate)
    assert not d["blessed"] and d["checks"]["group_fairness_user_gender"]["detail"].startswith(
        "Recall@100 of user_gender: best M 0.4000 (30 users) / worst F 0.0000 (12 users): the worst group has recall "
        "0, an unbounded ratio > max_group_recall_ratio 3.0 (groups of >= 10 users)")
    # The same group with 9 users is left out by slices.fairness: one group left, not a comparison.
    d = decide("retrieval", _sliced(0.40, groups={"user_gender": {"F": (9, 0.0), "M": (30, 0.4)}}), None, gate)
    assert d["blessed"] and d["checks"]["group_fairness_user_gender"]["skipped"]
    assert ("group_fairness_user_gender: not checked: Recall@100: fewer than 2 groups with >= 10 users"
            in d["reasons"])
    # Every group at 0: no group does better (the floors judge the recall itself).
    d = decide("retrieval", _sliced(0.40, groups={"user_gender": {"F": (12, 0.0), "M": (30, 0.0)}}), None, gate)
    assert d["blessed"] and d["checks"]["group_fairness_user_gender"]["ok"]


def test_group_recall_ratio_is_skipped_with_a_note_without_user_feature_slices():
    gate = GateConfig(max_group_recall_ratio=1.5)
    for metrics in (_retrieval(0.40), _sliced(0.40, cold=0.2)):  # no slices at all; only the activity slice
        d = decide("retrieval", metrics, None, gate)
        assert d["blessed"] and d["checks"]["group_fairness"]["skipped"]
        assert any(r.startswith("group_fairness: not checked: this model's metrics.json has no user-feature slices")
                   for r in d["reasons"])


def test_slice_check_settings_are_validated():
    cfg = trainer_config({"gate": {"max_cold_user_recall_drop": 0, "max_group_recall_ratio": 2}})
    assert (cfg.gate.max_cold_user_recall_drop, cfg.gate.max_group_recall_ratio) == (0.0, 2.0)
    with pytest.raises(ValueError, match=r"trainer.gate: max_group_recall_ratio must be >= 1"):
        trainer_config({"gate": {"max_group_recall_ratio": -1.5}})
    with pytest.raises(ConfigError, match="max_group_recall_ratio must be >= 1"):
        GateConfig(max_group_recall_ratio=0.8)  # a best / worst ratio is never below 1
    with pytest.raises(ConfigError, match=r"max_cold_user_recall_drop must be in \[0, 1\] \(or -1: off\)"):
        GateConfig(max_cold_user_recall_drop=-0.5)
