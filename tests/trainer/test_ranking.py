"""Ranking: train + export on a tiny dataset end to end, then the served ``score`` signature."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import trainer  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from serving import names
from tests.support.ranking_queries import score_query
from trainer import features as F, raw_data

# Enough steps (6 epochs x 12 batches at lr 0.01, ~10 s) to learn the tiny data's rating rule.
TRAINER_CFG = {"ranking": {"epochs": 6, "batch_size": 64, "learning_rate": 0.01, "embedding_dim": 8,
                           "deep_units": [32], "num_cross_layers": 2}}


@pytest.fixture(scope="module")
def ranking(tiny_pipeline, tmp_path_factory):
    from trainer.hparams import trainer_config
    from trainer.ranking.train import train_and_export

    root = tmp_path_factory.mktemp("ranking")
    serving_dir = str(root / "model" / "Format-Serving")
    run_dir = str(root / "model_run")
    metrics = train_and_export(tiny_pipeline.examples_uri, tiny_pipeline.transform_dir, serving_dir, run_dir,
                               tiny_pipeline.side_features, tiny_pipeline.history_length, trainer_config(TRAINER_CFG),
                               log_dir=os.path.join(run_dir, "tensorboard"))
    loaded = tf.saved_model.load(serving_dir)
    return {"metrics": metrics, "serving_dir": serving_dir, "run_dir": run_dir, "model": loaded,
            "score": loaded.signatures[names.SCORE_SIGNATURE]}


def _query(ranking, user_ids, **override) -> dict:
    return score_query(ranking["score"], user_ids, **override)


def _score(ranking, query: dict, candidates) -> dict:
    out = ranking["score"](**query, **{names.CANDIDATE_ITEM_IDS: tf.constant(candidates)})
    return {k: v.numpy() for k, v in out.items()}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_run_files_have_finite_metrics(ranking):
    run_dir = ranking["run_dir"]
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        m = json.load(fh)
    for part in ("model", "baseline"):
        assert _finite(m[part]["rmse"]) and _finite(m[part]["auc"]), m
        assert 0.0 <= m[part]["auc"] <= 1.0
    # Ratings (and engagement = rating >= 4) follow user gender x item genre (tests/support/tiny_pipeline.py),
    # which neither baseline sees: the global mean rating and item popularity (AUC ~0.5 here). Measured
    # over seeds 0-3: RMSE 0.88-0.94 vs 1.145, AUC 0.83-0.86 vs 0.50 (180 eval rows: a random AUC's sd ~0.04).
    assert m["model"]["rmse"] < 0.9 * m["baseline"]["rmse"], m
    assert m["model"]["auc"] > max(0.7, m["baseline"]["auc"] + 0.1), m
    assert m["num_eval_examples"] > 0 and 1 <= m["best_epoch"] <= m["epochs_run"]
    # The gate reads the copy beside the model.
    assert os.path.exists(os.path.join(os.path.dirname(ranking["serving_dir"]), "metrics.json"))
    with open(os.path.join(run_dir, "history.json")) as fh:
        h = json.load(fh)
    assert len(h["loss"]) == m["epochs_run"] == len(h["grad_norm"])
    assert {"rmse", "auc", "val_rmse", "val_auc", "val_loss", "val_loss_per_example"} <= set(h)
    # The epoch is selected on the loss over the whole validation split, not Keras' val_loss (its last batch's).
    assert m["selection"]["metric"] == "val_loss_per_example"
    assert m["selection"]["best_value"] == min(h["val_loss_per_example"][:m["epochs_run"]])
    with open(os.path.join(run_dir, "feature_importance.json")) as fh:
        imp = json.load(fh)
    expected = {"user_id", "user_age", "user_gender", "user_occupation", "item_id", "item_title", "item_genres",
                "item_release_year", "history", "hour_of_day", "day_of_week", "recency"}
    assert set(imp) == expected
    for group, vals in imp.items():
        assert set(vals) == {"rmse_increase", "auc_drop"}
        assert all(_finite(v) for v in vals.values()), (group, vals)
    with open(os.path.join(run_dir, "feature_importance_sample.json")) as fh:
        sample = json.load(fh)
    # The tiny eval split is smaller than the 20,000-row cap: every row, and so the whole split's RMSE.
    assert sample["rows"] == sample["eval_rows"] == m["num_eval_examples"] and sample["max_rows"] == 20_000
    assert sample["rmse"] == pytest.approx(m["model"]["rmse"], rel=1e-4) and 0.0 <= sample["auc"] <= 1.0
    assert os.path.isdir(os.path.join(run_dir, "tensorboard"))


def test_score_shapes_ranges_and_unknowns(ranking, tiny_pipeline):
    users = [tiny_pipeline.user_ids[0], "no-such-user", tiny_pipeline.user_ids[1]]
    cands = [tiny_pipeline.item_ids[:3] + ["no-such-item"]] * 3
    out = _score(ranking, _query(ranking, users), cands)
    assert set(out) == {names.OUT_RATING, names.OUT_ENGAGEMENT}
    for v in out.values():
        assert v.shape == (3, 4) and v.dtype == np.float32 and np.all(np.isfinite(v))
    assert np.all((out[names.OUT_ENGAGEMENT] >= 0) & (out[names.OUT_ENGAGEMENT] <= 1))
    # serving_default is the same function.
    default = ranking["model"].signatures[names.DEFAULT_SIGNATURE]
    again = default(**_query(ranking, users), **{names.CANDIDATE_ITEM_IDS: tf.constant(cands)})
    np.testing.assert_allclose(again[names.OUT_RATING].numpy(), out[names.OUT_RATING], rtol=1e-6)


def test_candidate_order_permutes_scores(ranking, tiny_pipeline):
    cands = np.array(tiny_pipeline.item_ids[:6] + ["no-such-item"], dtype=object)
    perm = np.random.default_rng(0).permutation(len(cands))
    q = _query(ranking, tiny_pipeline.user_ids[:2])
    a = _score(ranking, q, [list(cands)] * 2)
    b = _score(ranking, q, [list(cands[perm])] * 2)
    for key in (names.OUT_RATING, names.OUT_ENGAGEMENT):
        np.testing.assert_allclose(b[key], a[key][:, perm], rtol=1e-5, atol=1e-6)
    # Rows differ by user, so each row is scored with its own query.
    one = _score(ranking, _query(ranking, tiny_pipeline.user_ids[1:2]), [list(cands)])
    np.testing.assert_allclose(one[names.OUT_RATING][0], a[names.OUT_RATING][1], rtol=1e-5, atol=1e-6)


def test_known_user_alone_uses_stored_state(ranking, tiny_pipeline):
    spec = ranking["score"].structured_input_signature[1]
    keys = [F.USER_ID, F.HISTORY_ITEM_IDS, *[k for k in spec if k.startswith(F.USER_FEATURE_PREFIX)]]
    users = raw_data.read_numpy(raw_data.split_files(tiny_pipeline.examples_uri, "users"),
                                {k: v for k, v in _raw_spec(tiny_pipeline).items() if k in keys})
    rows = [0, 1]
    uid = [users[F.USER_ID][r].decode() for r in rows]
    explicit = {F.HISTORY_ITEM_IDS: users[F.HISTORY_ITEM_IDS][rows]}
    explicit.update({k: users[k][rows] for k in keys[2:]})
    cands = [tiny_pipeline.item_ids[:5]] * 2
    alone = _score(ranking, _query(ranking, uid), cands)
    given = _score(ranking, _query(ranking, uid, **explicit), cands)
    np.testing.assert_allclose(alone[names.OUT_RATING], given[names.OUT_RATING], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone[names.OUT_ENGAGEMENT], given[names.OUT_ENGAGEMENT], rtol=1e-5, atol=1e-6)


def test_warmup_requests_cover_score_and_explain_and_run(ranking):
    """Every signature a client calls has a warmup record (explain too: its first call otherwise
    pays the gradient graph's first run after a load), and each record runs on the export."""
    from serving.model_server.warmup_file import read_warmup_requests

    requests = read_warmup_requests(ranking["serving_dir"])
    by_signature = {}
    for req in requests:
        assert req.model_spec.name == names.RANKING_MODEL
        by_signature.setdefault(req.model_spec.signature_name, []).append(req)
    assert sorted(by_signature) == sorted([names.SCORE_SIGNATURE, names.EXPLAIN_SIGNATURE])
    assert len(by_signature[names.SCORE_SIGNATURE]) == 2 and len(by_signature[names.EXPLAIN_SIGNATURE]) == 1
    for req in requests:
        fn = ranking["model"].signatures[req.model_spec.signature_name]
        out = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in req.inputs.items()})
        cands = tf.make_ndarray(req.inputs[names.CANDIDATE_ITEM_IDS])
        assert out[names.OUT_ENGAGEMENT].shape == cands.shape
        if req.model_spec.signature_name == names.EXPLAIN_SIGNATURE:
            assert out[names.OUT_ENGAGEMENT_ATTRIBUTIONS].shape[:2] == cands.shape


def _raw_spec(tiny_pipeline) -> dict:
    import tensorflow_transform as tft

    return tft.TFTransformOutput(tiny_pipeline.transform_dir).raw_feature_spec()


def test_evaluate_examples_signature_scores_raw_examples(ranking, tiny_pipeline):
    """The signature TFMA's Evaluator calls: serialized raw eval examples -> one score per head."""
    files = raw_data.split_files(tiny_pipeline.examples_uri, "eval")
    serialized = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(16)))
    out = ranking["model"].signatures[names.EVAL_SIGNATURE](examples=serialized)
    rating, engagement = out[names.OUT_RATING].numpy(), out[names.OUT_ENGAGEMENT].numpy()
    assert rating.shape == (int(serialized.shape[0]),) and engagement.shape == rating.shape
    assert np.all(np.isfinite(rating)) and np.all((engagement >= 0) & (engagement <= 1))


def test_score_encodes_each_side_once_and_matches_the_whole_model(ranking, tiny_pipeline):
    """``score`` encodes the query once per row and reads items from the export-time table
    (RankingModel.score_encoded); ``evaluate_examples`` runs the whole model on each raw
    example. The same (user, history, context, item) must get the same scores from both."""
    import tensorflow_transform as tft

    files = raw_data.split_files(tiny_pipeline.examples_uri, "eval")
    serialized = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8)))
    whole = ranking["model"].signatures[names.EVAL_SIGNATURE](examples=serialized)
    spec = tft.TFTransformOutput(tiny_pipeline.transform_dir).raw_feature_spec()
    raw = tf.io.parse_example(serialized, spec)
    score_keys = ranking["score"].structured_input_signature[1]
    dense = {}
    for key in score_keys:
        if key == names.CANDIDATE_ITEM_IDS:
            continue
        value = raw[key]
        if isinstance(value, tf.SparseTensor):
            value = tf.sparse.to_dense(value, default_value=b"" if value.dtype == tf.string else 0)
        if key == names.HISTORY_ITEM_IDS and value.shape[1] == 0:
            value = tf.fill([value.shape[0], 1], b"")
        dense[key] = tf.reshape(value, [-1]) if len(value.shape) == 2 and key != names.HISTORY_ITEM_IDS else value
    items = tf.reshape(tf.sparse.to_dense(raw[F.ITEM_ID]) if isinstance(raw[F.ITEM_ID], tf.SparseTensor)
                       else raw[F.ITEM_ID], [-1, 1])
    pairs = ranking["score"](**dense, **{names.CANDIDATE_ITEM_IDS: items})
    for key in (names.OUT_RATING, names.OUT_ENGAGEMENT):
        np.testing.assert_allclose(pairs[key].numpy()[:, 0], whole[key].numpy(), rtol=1e-4, atol=1e-5)
    # The export holds encoded items, not the per-feature rows it used to gather per pair.
    assert hasattr(ranking["model"], "item_encoded") and not hasattr(ranking["model"], "item_rows")


def test_explain_attributions_are_the_derivative_of_scaling_each_group(ranking, tiny_pipeline):
    """``explain``: gradient x input per (query, candidate, feature group), [B, C, G], groups named
    as the permutation importance names them, scores equal to ``score``'s.

    The assertion that fails on garbage: the attribution of group g is sum_d x_d * dlogit/dx_d over
    g's encoded columns, which is exactly the derivative of the engagement logit with respect to a
    factor t that scales g's encoded vector, at t = 1. The export carries (outside the signatures)
    ``group_scaled_logits``, the same forward pass with such per-group factors; a central
    difference of it at t = 1 +- eps, group by group, must match each pair's attribution. Wrong
    group spans, a wrong head, mixed-up (query, candidate) rows or a mis-reshaped output all
    break it. The cross layers make the logit a low-degree polynomial between ReLU kinks, so the
    central difference is accurate to O(eps^2).
    """
    explain = ranking["model"].signatures[names.EXPLAIN_SIGNATURE]
    users = [tiny_pipeline.user_ids[0], "no-such-user"]
    cands = [tiny_pipeline.item_ids[:3] + ["no-such-item"], tiny_pipeline.item_ids[3:7]]
    query = _query(ranking, users, **{names.HOUR_OF_DAY: np.array([9, 20]), names.DAY_OF_WEEK: np.array([2, 6]),
                                      names.HOURS_SINCE_PREV_EVENT: np.array([3.0, 40.0], np.float32)})
    out = {k: v.numpy() for k, v in explain(**query, **{names.CANDIDATE_ITEM_IDS: tf.constant(cands)}).items()}
    groups = [g.decode() for g in out[names.OUT_FEATURE_GROUPS][0]]
    with open(os.path.join(ranking["run_dir"], "feature_importance.json")) as fh:
        assert sorted(groups) == sorted(json.load(fh))
    assert out[names.OUT_FEATURE_GROUPS].shape == (2, len(groups)) and (out[names.OUT_FEATURE_GROUPS][1] ==
                                                                         out[names.OUT_FEATURE_GROUPS][0]).all()
    for key in (names.OUT_ENGAGEMENT_ATTRIBUTIONS, names.OUT_RATING_ATTRIBUTIONS):
        assert out[key].shape == (2, 4, len(groups)) and out[key].dtype == np.float32
        assert np.all(np.isfinite(out[key])) and np.any(out[key] != 0)
    scores = _score(ranking, query, cands)
    for key in (names.OUT_RATING, names.OUT_ENGAGEMENT):
        np.testing.assert_allclose(out[key], scores[key], rtol=1e-5, atol=1e-6)

    scaled = ranking["model"].group_scaled_logits
    inputs = {**query, names.CANDIDATE_ITEM_IDS: tf.constant(cands)}
    ones = np.ones(len(groups), np.float32)
    logit = scaled(inputs, tf.constant(ones)).numpy()
    engagement = scores[names.OUT_ENGAGEMENT]
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), engagement, rtol=1e-5, atol=1e-6)
    eps = 1e-2
    numeric = np.zeros_like(out[names.OUT_ENGAGEMENT_ATTRIBUTIONS])
    for g in range(len(groups)):
        up, down = ones.copy(), ones.copy()
        up[g], down[g] = 1 + eps, 1 - eps
        numeric[..., g] = (scaled(inputs, tf.constant(up)).numpy() - scaled(inputs, tf.constant(down)).numpy()) / (2 * eps)
    np.testing.assert_allclose(out[names.OUT_ENGAGEMENT_ATTRIBUTIONS], numeric, rtol=2e-2, atol=2e-3)
    # Not a constant per group: the same query's groups weigh differently for different candidates.
    assert not np.allclose(out[names.OUT_ENGAGEMENT_ATTRIBUTIONS][0, 0], out[names.OUT_ENGAGEMENT_ATTRIBUTIONS][0, 1])


def test_ranking_export_holds_only_stock_ops(ranking):
    """Every op of the ranking export (score, explain with its gradient ops, evaluate_examples)
    is registered by plain TensorFlow in a fresh process (no ScaNN, no TF Text, no project code
    imported), so stock TF Serving can load it; and it loads there with the explain signature."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        sys.modules["scann"] = None  # any `import scann` now fails
        import tensorflow as tf
        from tensorflow.python.framework import op_def_registry
        from tests.support.saved_model_ops import graph_ops, scann_ops
        ops = graph_ops({ranking["serving_dir"]!r})
        assert not scann_ops({ranking["serving_dir"]!r})
        assert "ReluGrad" in ops, sorted(ops)  # explain's gradient is in the graph
        print("unregistered", sorted(op for op in ops if op_def_registry.get(op) is None))
        print("signatures", sorted(tf.saved_model.load({ranking["serving_dir"]!r}).signatures))
    """)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unregistered []" in done.stdout, done.stdout
    assert f"'{names.EXPLAIN_SIGNATURE}'" in done.stdout and f"'{names.SCORE_SIGNATURE}'" in done.stdout


def test_client_explains_the_trained_export_over_a_real_server(ranking, tiny_pipeline, tmp_path):
    """RecommenderClient.explain_scores against the real model server serving this export: the
    [B, G] group names and [B, C, G] attributions decode, and each item's factors are the
    signature's own values, largest |attribution| first."""
    import shutil

    from serving.client import RecommenderClient
    from serving.model_server import ModelServer

    base = tmp_path / names.RANKING_MODEL
    shutil.copytree(ranking["serving_dir"], base / "1")
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{\n  config {{ name: "{names.RANKING_MODEL}" base_path: "{base}" '
                      f'model_platform: "tensorflow" }}\n}}\n')
    user, items = tiny_pipeline.user_ids[0], tiny_pipeline.item_ids[:3]
    expected = ranking["model"].signatures[names.EXPLAIN_SIGNATURE](
        **_query(ranking, [user]), **{names.CANDIDATE_ITEM_IDS: tf.constant([items])})
    groups = [g.decode() for g in expected[names.OUT_FEATURE_GROUPS].numpy()[0]]
    attr = expected[names.OUT_ENGAGEMENT_ATTRIBUTIONS].numpy()[0]
    srv = ModelServer(str(config), grpc_port=0, rest_port=None, metrics_port=None, poll_interval_s=5.0)
    srv.start()
    try:
        srv.wait_until_available(120)
        with RecommenderClient(srv.grpc_address, timeout_s=30, recommender_model=None) as client:
            factors = client.explain_scores(user, items)
    finally:
        srv.stop(grace_s=0.5)
    assert list(factors) == items
    for c, item in enumerate(items):
        top = np.argsort(-np.abs(attr[c]), kind="stable")[:3]
        assert [g for g, _ in factors[item]] == [groups[g] for g in top]
        np.testing.assert_allclose([a for _, a in factors[item]], attr[c][top], rtol=1e-5, atol=1e-6)


def test_ranking_loss_under_two_mirrored_replicas_equals_one_replica():
    """The ranking loss is a mean over the global batch (trainer/ranking/model.py ``compute_loss``):
    under a 2-replica MirroredStrategy (the CPU split into 2 logical devices, in a fresh process:
    the split must precede TensorFlow's device set-up) one batch's loss and gradient summed over
    the replicas equal the default strategy's, also when the batch splits unevenly (5 + 2 rows, as
    a last evaluation batch can); so do one ``fit`` step's updated weights, its logged losses and
    metrics, training and validation (whose last batch, 3 rows, splits unevenly), the per-example losses
    (trainer/training_logs.py PerExampleLoss), and GradientNormLogger's norm. The single-replica
    loss is the hand-computed one: the weighted squared errors (rating weight 0 on every third
    row) and the BCEs, each summed over the rows and divided by all of them.
    (tests/support/multiworker.py ``mirrored_ranking_check``.)"""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = json.dumps({"check": "mirrored_ranking"})
    done = subprocess.run([sys.executable, "-m", "tests.support.multiworker", args], capture_output=True, text=True,
                          timeout=300, cwd=repo, env={**os.environ, "PYTHONPATH": repo})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["per_replica_rows"] == [5, 2]
    assert result["loss"] == pytest.approx(result["hand_loss"], rel=1e-5)
    fit = ("fit_weights", "fit_loss", "fit_rmse", "fit_auc", "fit_val_loss", "fit_val_rmse", "fit_val_auc",
           "fit_loss_per_example", "fit_val_loss_per_example")
    for key, rel in (("loss", 1e-6), ("grads", 1e-5), ("grad_norm", 1e-6), *((k, 1e-6) for k in fit)):
        assert result[key + "_mirrored"] == pytest.approx(result[key], rel=rel, abs=1e-7), key
    # The validation loss per example is over all 7 rows (exact: not the replicas' sum divided by 2).
    assert result["fit_per_example_mirrored"] == "exact" and "global batch" in result["fit_how_mirrored"]
    assert result["grads"][0] > 0.1  # a real gradient, not two zeros
    # The gradient probe is a tf.function: no strategy.run called eagerly.
    assert "significant overhead" not in done.stderr
