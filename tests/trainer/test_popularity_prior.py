"""The popularity prior of retrieval scores: picked on validation, evaluated and served as q . c + bias."""

import numpy as np
import pytest
import tensorflow as tf

from serving import names
from trainer import features as F
from trainer.hparams import ConfigError, trainer_config
from trainer.retrieval import prior
from tests.support.retrieval_requests import assert_picked_on_grid, query_inputs, recommend_inputs, scann_beside


def test_bias_is_a_share_of_log_popularity_in_score_units():
    counts = np.array([0.0, 1.0, 8.0])
    np.testing.assert_allclose(prior.log_popularity(counts), np.log(np.array([1, 2, 9]) / 12.0))
    np.testing.assert_allclose(prior.item_bias(counts, 0.5, 0.05), 0.5 * 0.05 * np.log(np.array([1, 2, 9]) / 12.0),
                               rtol=1e-6)
    assert not prior.item_bias(counts, 0.0, 0.05).any()


def test_augmented_dot_product_adds_the_bias():
    rng = np.random.default_rng(0)
    q, c, bias = rng.normal(size=(4, 3)), rng.normal(size=(6, 3)), rng.normal(size=6)
    got = prior.augment_queries(q) @ prior.augment_candidates(c, bias).T
    np.testing.assert_allclose(got, q @ c.T + bias[None, :], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prior.augment_query_tensor(tf.constant(q, tf.float32)).numpy(),
                               prior.augment_queries(q))


def test_select_takes_the_best_beta_and_the_smaller_on_ties():
    counts = np.array([1.0, 2.0, 3.0])
    # A metric that peaks at beta 0.5 (the bias is proportional to beta).
    unit = prior.item_bias(counts, 1.0, 1.0)
    beta, values = prior.select(lambda b: -abs(b[0] / unit[0] - 0.5), counts, 1.0)
    assert beta == 0.5 and set(values) == set(prior.GRID)
    beta, _ = prior.select(lambda b: 1.0, counts, 1.0)  # no beta helps: no prior
    assert beta == 0.0


@pytest.mark.parametrize("key", ["popularity_prior", "popularity_prior_cold", "als_blend"])
def test_config_accepts_auto_off_or_a_value_only(key):
    assert getattr(trainer_config({}).retrieval, key) == prior.AUTO
    assert getattr(trainer_config({"retrieval": {key: 0.75}}).retrieval, key) == 0.75
    with pytest.raises(ConfigError, match=key):
        trainer_config({"retrieval": {key: -0.5}})


def test_default_run_picks_the_prior_on_validation(trained_retrieval):
    _, metrics, _ = trained_retrieval
    picked = metrics["selection"]["popularity_prior"]
    assert picked["picked_on"] == "validation"
    values = {float(b): v for b, v in picked["validation"].items()}
    assert_picked_on_grid(values, picked["beta"], prior.GRID)
    assert metrics["popularity_prior"] == picked["beta"]
    # No cold users to split out here: the cold users share the beta, the served value is its value.
    assert picked["beta_cold"] == picked["beta"] == metrics["popularity_prior_cold"]
    assert picked["served_value"] == pytest.approx(values[picked["beta"]])


@pytest.fixture(scope="module")
def with_prior(tiny_pipeline, tmp_path_factory):
    """A 1-epoch run with a fixed, strong prior (beta 2): the served scores must carry it."""
    from trainer.retrieval.train import train_and_export

    out = tmp_path_factory.mktemp("prior")
    examples, transform, side, hist = tiny_pipeline
    metrics = train_and_export(examples, transform, str(out / "serving"), str(out / "run"), side, hist,
                               trainer_config({"retrieval": {"epochs": 1, "batch_size": 64, "popularity_prior": 2.0},
                                               "evaluation": {"enabled": False}}))
    return out, metrics, side


def _request(user_ids, side, k):
    query = query_inputs(user_ids, side)
    return query, recommend_inputs(query, k)


def _check_served_scores(model, query_model, side, bias_by_id):
    users = [b"u1", b"u2", b"nobody"]
    query_inputs, inputs = _request(users, side, 10)
    out = model.signatures[names.RECOMMEND_SIGNATURE](**inputs)
    q = query_model.signatures[names.QUERY_EMBEDDING_SIGNATURE](**query_inputs)[names.OUT_EMBEDDING].numpy()
    for row, ids in enumerate(out[names.OUT_ITEM_IDS].numpy()):
        c = query_model.signatures[names.CANDIDATE_EMBEDDING_SIGNATURE](
            **{names.ITEM_IDS_INPUT: tf.constant(ids)})[names.OUT_EMBEDDING].numpy()
        want = c @ q[row] + np.array([bias_by_id[i] for i in ids])
        np.testing.assert_allclose(out[names.OUT_SCORES].numpy()[row], want, rtol=1e-4, atol=1e-4)


def test_served_scores_are_dot_product_plus_the_prior(with_prior, tiny_pipeline):
    from trainer import raw_data

    out, metrics, side = with_prior
    assert metrics["popularity_prior"] == 2.0 and metrics["selection"]["popularity_prior"]["picked_on"] == "config"
    assert "model_without_prior" in metrics  # the same model's own scores, for comparison
    model = tf.saved_model.load(str(out / "serving"))
    ids = model.candidate_ids.numpy()
    # The bias is the prior of each candidate's train count (all of train, as served).
    spec = {F.ITEM_ID: tf.io.FixedLenFeature([1], tf.string)}
    train_items = np.ravel(raw_data.read_numpy(raw_data.split_files(tiny_pipeline.examples_uri, "train"), spec)[F.ITEM_ID])
    counts = np.array([(train_items == i).sum() for i in ids], np.float64)
    expected = prior.item_bias(counts, 2.0, trainer_config({}).retrieval.temperature)
    np.testing.assert_allclose(model.candidate_bias.numpy(), expected, rtol=1e-5)
    assert np.ptp(expected) > 0.05  # strong enough to reorder the lists
    _check_served_scores(model, model, side, dict(zip(ids, expected)))


def test_scann_export_serves_the_same_prior(with_prior, tmp_path):
    out, _, side = with_prior
    scann_model, bf = scann_beside(out, tmp_path / "scann")
    _check_served_scores(scann_model, bf, side, dict(zip(bf.candidate_ids.numpy(), bf.candidate_bias.numpy())))
    _, inputs = _request([b"u1", b"u2"], side, 10)
    np.testing.assert_array_equal(scann_model.signatures[names.RECOMMEND_SIGNATURE](**inputs)[names.OUT_ITEM_IDS],
                                  bf.signatures[names.RECOMMEND_SIGNATURE](**inputs)[names.OUT_ITEM_IDS])


def test_report_says_which_prior_was_served_and_what_it_changed(with_prior, trained_retrieval):
    from trainer.report import prior_line

    line = prior_line(with_prior[1])
    assert "beta 2 (config;" in line and "Ours without it: Recall@100" in line, line
    auto = prior_line(trained_retrieval[1])
    assert "(validation; validation recall@100 by beta: 0: " in auto, auto
    assert prior_line({"model": {}}) is None
