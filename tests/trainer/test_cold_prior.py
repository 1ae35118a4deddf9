"""The popularity prior by activity bucket (cold users first): picked on each bucket's validation users,
served by the query's last component ([q, s] . [c, bias]: s = the bucket's beta / B)."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from serving import names
from trainer import features as F
from trainer.hparams import trainer_config
from trainer.retrieval import metrics as M, prior
from tests.support.retrieval_requests import query_inputs, recommend_inputs


def test_scales_share_one_stored_bias():
    for (cold, warm), want in {(4.0, 0.5): (4.0, [1.0, 0.125]), (1.0, 1.0): (1.0, [1.0, 1.0]),
                               (0.0, 0.0): (0.0, [1.0, 1.0]), (0.0, 2.0): (2.0, [0.0, 1.0])}.items():
        top, got = prior.bucket_scales([cold, warm])
        assert top == want[0] and got.tolist() == want[1]
    q, c, bias = np.ones((2, 3)), np.zeros((4, 3)), np.arange(4.0)
    got = prior.augment_queries(q, [1.0, 0.25]) @ prior.augment_candidates(c, bias).T
    np.testing.assert_allclose(got, [bias, 0.25 * bias])
    np.testing.assert_allclose(prior.augment_query_tensor(tf.constant(q, tf.float32), tf.constant([1.0, 0.25])).numpy(),
                               prior.augment_queries(q, [1.0, 0.25]))


def _validation(num_cold: int, num_light: int = 0):
    """A ValidationRetrieval over a hand-made task: 60 warm users (4 fit items) whose truth is the
    unpopular item their query points at; ``num_cold`` cold users (no fit item) and ``num_light``
    users with one fit item, whose truth is a popular item their flat, slightly anti-popular
    query ranks last."""
    from trainer.retrieval.train import ValidationRetrieval

    items = np.array([f"i{j:02d}" for j in range(40)], dtype=object)
    warm = [f"w{k:02d}" for k in range(60)]
    cold = [f"c{k:02d}" for k in range(num_cold)]
    light = [f"l{k:02d}" for k in range(num_light)]
    train = pd.DataFrame([(u, f"i{j}") for u in warm for j in (36, 37, 38, 39)] + [(u, "i39") for u in light],
                         columns=[F.USER_ID, F.ITEM_ID])
    truth = ([(u, items[20 + k % 10]) for k, u in enumerate(warm)]
             + [(u, items[k % 3]) for k, u in enumerate(cold + light)])
    task = M.build_eval_task(train, pd.DataFrame(truth, columns=[F.USER_ID, F.ITEM_ID]), items)
    c = np.eye(40, dtype=np.float32)
    q = np.zeros((task.num_users, 40), np.float32)
    for r, user in enumerate(task.user_ids):
        if user.startswith("w"):
            q[r, 20 + int(user[1:]) % 10] = 1.0
        else:
            q[r] = 0.01 * np.arange(40) / 40  # prefers the least popular items, by a hair
    val = object.__new__(ValidationRetrieval)
    val.task, val.k, val.metric, val.history_cap = task, 10, "recall@10", 20
    val.fit_counts = np.arange(40, 0, -1).astype(np.float64)  # item 0 the most popular
    val.vectors = lambda: (q, c)
    return val


def test_bucket_names_and_assignment():
    edges = prior.ACTIVITY_EDGES
    np.testing.assert_array_equal(prior.activity_buckets([0, 1, 2, 3, 4, 7, 8, 15, 16, 200], edges),
                                  [0, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    assert [prior.bucket_name(b, edges) for b in range(6)] == [
        "0 items", "1 item", "2-3 items", "4-7 items", "8-15 items", "16+ items"]


def test_cold_users_get_their_own_beta_picked_on_them():
    val = _validation(num_cold=60)
    assert (val.activity == 0).sum() == 60
    sel = val.select_prior(0.05)
    assert sel["bucket_users"][0] == 60 and sel["bucket_users"][3] == 60
    assert set(sel["bucket_validation"]) == {0, 3} and set(sel["bucket_validation"][0]) == set(prior.COLD_GRID)
    assert set(sel["bucket_validation"][3]) == set(prior.GRID)
    # The warm users' truth is what their query points at: no beta changes it, ties keep 0.
    assert sel["betas"][3] == 0.0
    # The cold users' truth is popular: the smallest beta that lets popularity win is picked.
    assert sel["betas"][0] > 0 and sel["bucket_validation"][0][sel["betas"][0]] == 1.0
    assert sel["bucket_validation"][0][0.0] == 0.0
    served = val.score(*val.prior_scales(sel["betas"], 0.05))
    assert served == pytest.approx(1.0) and val.score() == pytest.approx(0.5)
    # Without activity buckets: cold vs the rest, the same picks.
    two = val.select_prior(0.05, prior.COLD_EDGES)
    assert two["betas"] == [sel["betas"][0], 0.0]


def test_light_users_get_their_own_beta_too():
    val = _validation(num_cold=0, num_light=60)  # one fit item each, popular truth
    sel = val.select_prior(0.05)
    assert set(sel["bucket_validation"]) == {1, 3}
    assert sel["betas"][1] > 0 and sel["betas"][3] == 0.0
    assert val.score(*val.prior_scales(sel["betas"], 0.05)) == pytest.approx(1.0)


def test_too_few_users_in_a_bucket_share_the_beta():
    val = _validation(num_cold=prior.MIN_COLD_USERS - 1)
    sel = val.select_prior(0.05)
    assert sel["bucket_validation"] == {} and set(sel["betas"]) == {sel["beta"]}
    assert set(sel["validation"]) == set(prior.GRID)  # picked on every user


@pytest.fixture(scope="module")
def with_cold_prior(tiny_pipeline, tmp_path_factory):
    """A 1-epoch run with fixed betas: 0.5 for warm users, 4 for cold ones; no ALS blend."""
    from trainer.retrieval.train import train_and_export

    out = tmp_path_factory.mktemp("cold_prior")
    examples, transform, side, hist = tiny_pipeline
    retrieval = {"epochs": 1, "batch_size": 64, "popularity_prior": 0.5, "popularity_prior_cold": 4.0,
                 "als_blend": 0}
    metrics = train_and_export(examples, transform, str(out / "serving"), str(out / "run"), side, hist,
                               trainer_config({"retrieval": retrieval, "evaluation": {"enabled": False}}))
    return out, metrics, side


def test_served_scores_carry_the_cold_beta_for_cold_requests_only(with_cold_prior, tiny_pipeline):
    from trainer import raw_data

    out, metrics, side = with_cold_prior
    assert metrics["popularity_prior"] == 0.5 and metrics["popularity_prior_cold"] == 4.0
    model = tf.saved_model.load(str(out / "serving"))
    ids = model.candidate_ids.numpy()
    spec = {F.ITEM_ID: tf.io.FixedLenFeature([1], tf.string)}
    train_items = np.ravel(raw_data.read_numpy(raw_data.split_files(tiny_pipeline.examples_uri, "train"), spec)[F.ITEM_ID])
    counts = np.array([(train_items == i).sum() for i in ids], np.float64)
    temperature = trainer_config({}).retrieval.temperature
    log_p = dict(zip(ids, prior.log_popularity(counts)))
    # A known user, an unknown one with no history (cold), an unknown one who sends a history (warm).
    users, histories = [b"u1", b"nobody", b"nobody"], [[], [], [ids[0]]]
    query = query_inputs(users, side, histories)
    out_ = model.signatures[names.RECOMMEND_SIGNATURE](**recommend_inputs(query, 10))
    q = model.signatures[names.QUERY_EMBEDDING_SIGNATURE](**query)[names.OUT_EMBEDDING].numpy()
    for row, beta in enumerate((0.5, 4.0, 0.5)):
        top = out_[names.OUT_ITEM_IDS].numpy()[row]
        c = model.signatures[names.CANDIDATE_EMBEDDING_SIGNATURE](
            **{names.ITEM_IDS_INPUT: tf.constant(top)})[names.OUT_EMBEDDING].numpy()
        want = c @ q[row] + beta * temperature * np.array([log_p[i] for i in top])
        np.testing.assert_allclose(out_[names.OUT_SCORES].numpy()[row], want, rtol=1e-4, atol=1e-4)
    # Cold users' lists lean on popularity: the cold list's items are on average the more popular.
    count = dict(zip(ids, counts))
    cold_top, warm_top = out_[names.OUT_ITEM_IDS].numpy()[1], out_[names.OUT_ITEM_IDS].numpy()[2]
    assert np.mean([count[i] for i in cold_top]) >= np.mean([count[i] for i in warm_top])


def test_report_names_the_cold_beta(with_cold_prior):
    from trainer.report import prior_line

    line = prior_line(with_cold_prior[1])
    assert "beta 0.5 (config" in line and "0 items (cold) beta 4, 1+ items beta 0.5" in line, line
