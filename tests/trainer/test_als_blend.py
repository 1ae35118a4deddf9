"""The ALS blend of retrieval scores: picked on validation, evaluated and served as [q, w u, 1] . [c, v, bias]."""

import numpy as np
import pytest
import tensorflow as tf

from serving import names
from trainer import features as F
from trainer.hparams import trainer_config
from trainer.retrieval import als_blend
from tests.support.retrieval_requests import assert_picked_on_grid, query_inputs, recommend_inputs, scann_beside


def test_select_takes_the_best_w_and_the_smaller_on_ties():
    w, values = als_blend.select(lambda w: -abs(w - 0.5))
    assert w == 0.5 and set(values) == set(als_blend.GRID)
    assert als_blend.select(lambda w: 1.0)[0] == 0.0  # no w helps: ALS stays out


def test_block_rows_by_user_id_and_the_served_dot_product():
    rng = np.random.default_rng(0)
    users, v = np.array(["a", "b"], dtype=object), rng.normal(size=(5, 3)).astype(np.float32)
    u = rng.normal(size=(2, 3)).astype(np.float32)
    block = als_blend.AlsBlock(0.5, users, 0.5 * u, v)
    rows = block.query_rows([b"b", "nobody", "a"])  # bytes or str; an unknown id gets zeros
    np.testing.assert_allclose(rows, [0.5 * u[1], np.zeros(3), 0.5 * u[0]])
    q, c = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    got = als_blend.served_queries(q, block, rows) @ als_blend.served_candidates(c, block).T
    want = q @ c.T + 0.5 * np.stack([u[1] @ v.T, np.zeros(5), u[0] @ v.T])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert als_blend.served_queries(q, None, None).shape == (3, 4)  # no block: the model's own vectors


def test_default_run_picks_w_on_validation_after_the_prior(trained_retrieval):
    _, metrics, _ = trained_retrieval
    picked = metrics["selection"]["als_blend"]
    assert picked["picked_on"] == "validation"
    values = {float(w): v for w, v in picked["validation"].items()}
    assert_picked_on_grid(values, picked["w"], als_blend.GRID)
    assert metrics["als_blend"] == picked["w"]
    assert metrics["selection"]["served_value"] == values[picked["w"]]
    # w 0 is the prior's pick: the same scores, the same value.
    prior = metrics["selection"]["popularity_prior"]
    assert values[0.0] == pytest.approx(prior["validation"][prior["beta"]])


BLEND = {"epochs": 1, "batch_size": 64, "popularity_prior": 0.0, "als_blend": 2.0}


@pytest.fixture(scope="module")
def with_blend(tiny_pipeline, tmp_path_factory):
    """A 1-epoch run with a fixed, strong ALS blend (w 2), no prior: the served scores must carry it."""
    from trainer.retrieval.train import train_and_export

    out = tmp_path_factory.mktemp("blend")
    examples, transform, side, hist = tiny_pipeline
    metrics = train_and_export(examples, transform, str(out / "serving"), str(out / "run"), side, hist,
                               trainer_config({"retrieval": BLEND, "baseline": {"threads": 1},
                                               "evaluation": {"enabled": False}}))
    return out, metrics, side


def _request(user_ids, side, k):
    query = query_inputs(user_ids, side)
    return query, recommend_inputs(query, k)


def _train_fit(tiny_pipeline, ids):
    """ALS on all of train (the eval's and the export's fit), independently of the trainer's run."""
    import pandas as pd

    from trainer import raw_data
    from trainer.hparams import ClassicalBaselineConfig
    from trainer.retrieval import classical, metrics as M

    spec = {k: tf.io.FixedLenFeature([1], tf.string) for k in (F.USER_ID, F.ITEM_ID)}
    raw = raw_data.read_numpy(raw_data.split_files(tiny_pipeline.examples_uri, "train"), spec)
    train = pd.DataFrame({k: [v.decode() for v in np.ravel(raw[k])] for k in spec})
    task = M.build_eval_task(train, train.iloc[:1], np.asarray([i.decode() for i in ids], dtype=object))
    return classical.fit_als(train, task, ClassicalBaselineConfig(threads=1))


def _check_served_scores(model, base, side, fit):
    users = [b"u1", b"u2", b"nobody"]
    query_inputs, inputs = _request(users, side, 10)
    out = model.signatures[names.RECOMMEND_SIGNATURE](**inputs)
    q = base.signatures[names.QUERY_EMBEDDING_SIGNATURE](**query_inputs)[names.OUT_EMBEDDING].numpy()
    col = {i.decode(): j for j, i in enumerate(base.candidate_ids.numpy())}
    urow = {u: r for r, u in enumerate(fit.data.user_ids)}
    for row, (user, ids) in enumerate(zip(users, out[names.OUT_ITEM_IDS].numpy())):
        c = base.signatures[names.CANDIDATE_EMBEDDING_SIGNATURE](
            **{names.ITEM_IDS_INPUT: tf.constant(ids)})[names.OUT_EMBEDDING].numpy()
        v = fit.item_factors[[col[i.decode()] for i in ids]]
        u = fit.user_factors[urow[user.decode()]] if user.decode() in urow else np.zeros(v.shape[1])
        want = c @ q[row] + 2.0 * (v @ u)
        np.testing.assert_allclose(out[names.OUT_SCORES].numpy()[row], want, rtol=1e-3, atol=1e-3)
    return out


def test_served_scores_are_dot_product_plus_w_times_als(with_blend, tiny_pipeline):
    out, metrics, side = with_blend
    assert metrics["als_blend"] == 2.0 and metrics["selection"]["als_blend"]["picked_on"] == "config"
    assert {"model_without_als", "model_without_prior"} <= set(metrics)  # the same model, for comparison
    model = tf.saved_model.load(str(out / "serving"))
    fit = _train_fit(tiny_pipeline, model.candidate_ids.numpy())
    np.testing.assert_allclose(model.candidate_als_factors.numpy(), fit.item_factors, rtol=1e-4, atol=1e-5)
    assert np.abs(2.0 * fit.user_factors @ fit.item_factors.T).max() > 0.1  # strong enough to reorder the lists
    _check_served_scores(model, model, side, fit)
    # The eval queries are saved as served (less the prior's 1): [q, w u].
    queries = np.load(out / "run" / "eval_queries.npy")
    assert queries.shape[1] == model.candidate_embeddings.shape[1] + fit.factors


def test_scann_export_serves_the_same_blend(with_blend, tiny_pipeline, tmp_path):
    out, _, side = with_blend
    scann_model, bf = scann_beside(out, tmp_path / "scann")
    served = _check_served_scores(scann_model, bf, side, _train_fit(tiny_pipeline, bf.candidate_ids.numpy()))
    _, inputs = _request([b"u1", b"u2", b"nobody"], side, 10)
    np.testing.assert_array_equal(served[names.OUT_ITEM_IDS],
                                  bf.signatures[names.RECOMMEND_SIGNATURE](**inputs)[names.OUT_ITEM_IDS])


def test_report_says_which_blend_was_served_and_what_it_changed(with_blend, trained_retrieval):
    from trainer.report import blend_line

    line = blend_line(with_blend[1])
    assert "ALS blend: w 2 (config;" in line and "Ours without it: Recall@100" in line, line
    auto = blend_line(trained_retrieval[1])
    assert "(validation; validation recall@100 by w: 0: " in auto, auto
    assert blend_line({"model": {}}) is None
