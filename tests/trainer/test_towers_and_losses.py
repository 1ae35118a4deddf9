"""Towers, loss corrections and top-k post-processing on tiny hand-made tensors."""

import numpy as np
import tensorflow as tf

from trainer.query import finalize_topk, last_n_items
from trainer.retrieval.index import exact_topk, scann_params
from trainer.encoders import HistoryEncoder, MaskedMean


def test_masked_mean_ignores_padding():
    emb = tf.constant([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    ids = tf.constant([[4, 7, 0]])
    np.testing.assert_allclose(MaskedMean()(emb, ids).numpy(), [[2.0, 3.0]])
    # All padding: zeros, not NaN.
    np.testing.assert_allclose(MaskedMean()(emb, tf.constant([[0, 0, 0]])).numpy(), [[0.0, 0.0]])


def test_history_encoders_shapes_and_padding_invariance():
    table = tf.keras.layers.Embedding(10, 4)
    for kind in ("mean", "gru", "attention", "sasrec"):
        enc = HistoryEncoder(kind, table, dim=4, max_len=5)
        a = enc(tf.constant([[1, 2, 3, 0, 0]]))
        b = enc(tf.constant([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0]]))
        assert a.shape == (1, 4) and b.shape == (2, 4)
        np.testing.assert_allclose(a.numpy()[0], b.numpy()[0], rtol=1e-5, atol=1e-6)
        # A batch of empty histories can come as [B, 0] (e.g. a log without timestamps).
        empty = enc(tf.zeros([3, 0], tf.int64)).numpy()
        assert empty.shape == (3, 4) and np.all(np.isfinite(empty)), kind


def _softmax_xent_sum(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.trace(logp)


NUM_ITEMS = 12  # item index rows: 0 = padding, 1..10 items, 11 = OOV


def _retrieval_models(temperature=0.05, **flag_sets):
    """RetrievalModels (trainer/retrieval/model.py) sharing one pair of towers from build_towers.

    The layout is hand-built: user and item ids, history and context only (no side
    features). Each keyword names a model and gives its loss flags, e.g.
    ``plain=dict(logq_correction=False, remove_accidental_hits=False)``.
    """
    import dataclasses

    from trainer import features as F
    from trainer.hparams import RetrievalHParams
    from trainer.model_inputs import FeatureLayout
    from trainer.retrieval.model import RetrievalModel
    from trainer.retrieval.towers import build_towers

    layout = FeatureLayout(
        sizes={F.USER_ID_IDX: 8, F.ITEM_ID_IDX: NUM_ITEMS, F.HISTORY_IDX: NUM_ITEMS,
               F.HOUR_OF_DAY: F.HOURS_IN_DAY + 1, F.DAY_OF_WEEK: F.DAYS_IN_WEEK + 1},
        user_cats=(), user_nums=(), item_cats=(), item_lists=(), item_nums=(), list_features=(F.HISTORY_IDX,))
    hp = RetrievalHParams(embedding_dim=8, id_embedding_dim=8, feature_embedding_dim=4, hidden_units=(16,),
                          dropout=0.0, temperature=temperature)
    tf.keras.utils.set_random_seed(0)
    query_tower, candidate_tower = build_towers(layout, hp, history_len=3)
    return {name: RetrievalModel(query_tower, candidate_tower, dataclasses.replace(hp, **flags))
            for name, flags in flag_sets.items()}


def _batch(item_idx, item_counts=None):
    """A training batch of model inputs (distinct users); sampling probabilities from item_counts."""
    from trainer import features as F
    from trainer.retrieval.model import add_sampling_probability

    n = len(item_idx)
    batch = {
        F.USER_ID_IDX: tf.constant(np.arange(1, n + 1), tf.int64),
        F.ITEM_ID_IDX: tf.constant(item_idx, tf.int64),
        F.HISTORY_IDX: tf.constant([[1 + (r % 10), 1 + ((r + 3) % 10), 0] for r in range(n)], tf.int64),
        F.HOUR_OF_DAY: tf.constant([1 + 5 * r for r in range(n)], tf.int64),
        F.DAY_OF_WEEK: tf.constant([1 + r % 7 for r in range(n)], tf.int64),
        F.RECENCY_Z: tf.constant([0.1 * r for r in range(n)], tf.float32),
    }
    counts = np.ones(NUM_ITEMS, np.int64) if item_counts is None else np.asarray(item_counts, np.int64)
    return add_sampling_probability(tf.constant(counts))(batch)


def _logits(model, batch):
    """In-batch logits the model's loss is built from: cos(query, candidate) / temperature."""
    q = model.query_tower(batch).numpy()
    c = model.candidate_tower(batch).numpy()
    return q @ c.T / model.hp.temperature


def test_logq_correction_matches_hand_computation():
    """RetrievalModel.compute_loss subtracts log p(item) from each in-batch column when logq_correction is on."""
    from trainer.retrieval.model import SAMPLING_PROBABILITY

    models = _retrieval_models(plain=dict(logq_correction=False, remove_accidental_hits=False),
                               logq=dict(logq_correction=True, remove_accidental_hits=False))
    counts = np.array([0, 50, 10, 40, 1, 1, 1, 1, 1, 1, 1, 0])
    batch = _batch([1, 2, 3], counts)
    p = batch[SAMPLING_PROBABILITY].numpy()
    np.testing.assert_allclose(p, counts[[1, 2, 3]] / counts.sum(), rtol=1e-6)
    logits = _logits(models["plain"], batch)
    plain = float(models["plain"].compute_loss(batch))
    corrected = float(models["logq"].compute_loss(batch))
    np.testing.assert_allclose(plain, _softmax_xent_sum(logits), rtol=1e-5)
    np.testing.assert_allclose(corrected, _softmax_xent_sum(logits - np.log(p)[None, :]), rtol=1e-5)
    assert abs(corrected - plain) > 1e-3
    # Uniform sampling probabilities shift every column of a row equally: nothing to correct.
    uniform = _batch([1, 2, 3], [0] + [1] * 10 + [0])
    np.testing.assert_allclose(float(models["logq"].compute_loss(uniform)), float(models["plain"].compute_loss(uniform)),
                               rtol=1e-5)


def test_logq_correction_penalizes_popular_positives():
    """Direction of the correction: rare in-batch negatives (under-sampled) weigh more against a popular positive.

    Temperature 1 keeps every logit in [-1, 1] (unit-norm towers). Items 1..3 are popular
    (p ~ 1/3), 4..10 rare (p ~ 1/3e6): the correction lifts a rare column by log(1e6) ~ 13.8
    against a popular one. So, for any tower weights, a batch with one popular positive
    among three rare ones has corrected loss <= log(1 + 3 e^(2 + 13.8)) + 3 log(1 + e^(2 - 13.8)
    + 2 e^2) ~ 25.2, and a batch with three popular positives and one rare has >= 3 (13.8 - 2)
    ~ 35. Without the correction both are <= 4 log(1 + 3 e^2) ~ 12.6. A sign error (adding
    log p) would reverse the two batches.
    """
    models = _retrieval_models(temperature=1.0, plain=dict(logq_correction=False, remove_accidental_hits=False),
                               logq=dict(logq_correction=True, remove_accidental_hits=False))
    counts = [0, 1_000_000, 1_000_000, 1_000_000, 1, 1, 1, 1, 1, 1, 1, 0]
    one_popular, three_popular = _batch([1, 4, 5, 6], counts), _batch([4, 1, 2, 3], counts)
    loss = {name: {b: float(m.compute_loss(batch)) for b, batch in
                   (("one", one_popular), ("three", three_popular))} for name, m in models.items()}
    assert max(loss["plain"].values()) <= 4 * np.log(1 + 3 * np.e ** 2) + 1e-4, loss
    assert loss["logq"]["one"] > loss["plain"]["one"] and loss["logq"]["three"] > loss["plain"]["three"], loss
    assert loss["logq"]["three"] > 30.0 > 26.0 > loss["logq"]["one"], loss


def test_accidental_hits_are_not_negatives():
    """With remove_accidental_hits, a batch row holding the same item as the positive is no negative."""
    models = _retrieval_models(kept=dict(logq_correction=False, remove_accidental_hits=False),
                               removed=dict(logq_correction=False, remove_accidental_hits=True))
    # Items 7, 7 (two users, the same item), 2, 5.
    batch = _batch([7, 7, 2, 5])
    logits = _logits(models["kept"], batch)
    kept = float(models["kept"].compute_loss(batch))
    removed = float(models["removed"].compute_loss(batch))
    np.testing.assert_allclose(kept, _softmax_xent_sum(logits), rtol=1e-5)
    masked = logits.copy()
    masked[0, 1] = masked[1, 0] = -np.inf  # the other copy of item 7, for rows 0 and 1
    np.testing.assert_allclose(removed, _softmax_xent_sum(masked), rtol=1e-5)
    assert removed < kept - 1e-3  # fewer negatives in two rows' softmax: strictly lower
    # No duplicates: nothing removed.
    distinct = _batch([7, 3, 2, 5])
    np.testing.assert_allclose(float(models["removed"].compute_loss(distinct)),
                               float(models["kept"].compute_loss(distinct)), rtol=1e-5)
    # Only the same item twice: each row's only other column is masked, so each row's loss is -log(1) = 0.
    same = _batch([7, 7])
    np.testing.assert_allclose(float(models["removed"].compute_loss(same)), 0.0, atol=1e-5)
    # Kept, the copy is a negative scored exactly like the positive: log(2) per row.
    np.testing.assert_allclose(float(models["kept"].compute_loss(same)), 2 * np.log(2.0), rtol=1e-5)


def test_finalize_topk_excludes_history_and_honours_each_k():
    scores = tf.constant([[0.9, 0.8, 0.7, 0.1], [0.9, 0.8, 0.7, 0.1]])
    ids = tf.constant([[b"a", b"b", b"c", b"d"]] * 2)
    history = tf.constant([[b"a", b""], [b"a", b""]])
    top_ids, top_scores = finalize_topk(scores, ids, history, tf.constant([True, False]), tf.constant([2, 3]))
    assert top_ids.numpy().tolist() == [[b"b", b"c", b""], [b"a", b"b", b"c"]]
    assert np.isneginf(top_scores.numpy()[0, 2])


def test_last_n_items_skips_padding():
    h = tf.constant([[b"a", b"", b"b", b"c"], [b"", b"", b"", b""]])
    assert last_n_items(h, 2).numpy().tolist() == [[b"b", b"c"], [b"", b""]]


def test_scann_params_scale_with_corpus():
    small, large = scann_params(1_682, 110), scann_params(1_000_000, 110)
    assert small["num_leaves"] == 41 and large["num_leaves"] == 1000
    assert small["num_leaves_to_search"] >= 8 and large["num_leaves_to_search"] == 100
    assert small["num_reordering_candidates"] == 440


def test_exact_topk_orders_by_score():
    q = np.array([[1.0, 0.0]])
    e = np.array([[0.1, 0.0], [0.9, 0.0], [0.5, 0.0]])
    assert exact_topk(q, e, 2).tolist() == [[1, 2]]


def test_mixed_negatives_add_catalogue_candidates_with_mixture_logq():
    """uniform_negatives: N catalogue items join the in-batch candidates (training only), and the
    logQ correction uses each candidate's probability under the mixture, (B p + N / size) / (B + N)."""
    import dataclasses

    from trainer import features as F
    from trainer.retrieval.model import SAMPLING_PROBABILITY, RetrievalModel, item_probabilities

    base = _retrieval_models(plain=dict(logq_correction=True, remove_accidental_hits=False))["plain"]
    counts = np.array([0, 50, 10, 40, 1, 1, 1, 5, 1, 1, 1, 0])
    probs = item_probabilities(tf.constant(counts)).numpy()
    catalogue = {F.ITEM_ID_IDX: tf.constant([7], tf.int64)}  # a one-item catalogue: the draw is known
    n = 2
    mixed = RetrievalModel(base.query_tower, base.candidate_tower, dataclasses.replace(base.hp, uniform_negatives=n),
                           catalogue, probs)
    batch = _batch([1, 2, 3], counts)
    q = base.query_tower(batch).numpy()
    cands = np.concatenate([base.candidate_tower(batch).numpy(), np.repeat(base.candidate_tower(catalogue).numpy(), n, 0)])
    logits = q @ cands.T / base.hp.temperature
    p = (3 * np.concatenate([batch[SAMPLING_PROBABILITY].numpy(), [probs[7]] * n]) + n / 1) / (3 + n)
    np.testing.assert_allclose(float(mixed.compute_loss(batch, training=True)),
                               _softmax_xent_sum(logits - np.log(p)[None, :]), rtol=1e-5)
    # Not in evaluation (val_loss stays the in-batch loss), and the catalogue is required.
    np.testing.assert_allclose(float(mixed.compute_loss(batch)), float(base.compute_loss(batch)), rtol=1e-6)
    import pytest

    with pytest.raises(ValueError, match="uniform_negatives"):
        RetrievalModel(base.query_tower, base.candidate_tower, dataclasses.replace(base.hp, uniform_negatives=2))


def test_catalogue_softmax_scores_every_catalogue_item_without_corrections():
    """negatives: catalogue: each row's loss is the softmax cross-entropy of its item over every
    catalogue item (no logQ, no accidental-hit masking: nothing is sampled); the loss is the mean
    over rows, and a row whose item is not in the catalogue is left out."""
    import dataclasses

    import pytest

    from trainer import features as F
    from trainer.retrieval.model import RetrievalModel, item_probabilities

    base = _retrieval_models(plain=dict(logq_correction=True, remove_accidental_hits=True))["plain"]
    counts = np.array([0, 50, 10, 40, 1, 1, 1, 5, 1, 1, 1, 0])
    probs = item_probabilities(tf.constant(counts)).numpy()
    catalogue = {F.ITEM_ID_IDX: tf.constant([3, 1, 7, 2, 9], tf.int64)}  # catalogue rows in this order
    full = RetrievalModel(base.query_tower, base.candidate_tower, dataclasses.replace(base.hp, negatives="catalogue"),
                          catalogue, probs, full_softmax=True)
    batch = _batch([7, 7, 2, 4], counts)  # a duplicate (not masked) and item 4, not a candidate
    q = base.query_tower(batch).numpy()
    logits = q @ base.candidate_tower(catalogue).numpy().T / base.hp.temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean([logp[0, 2], logp[1, 2], logp[2, 3]])
    np.testing.assert_allclose(float(full.compute_loss(batch, training=True)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="catalogue softmax"):
        RetrievalModel(base.query_tower, base.candidate_tower, base.hp, full_softmax=True)


def test_future_items_are_each_users_next_events_in_time_order():
    """target_window: row i holds its own item, then the same user's next events by time (ties in
    file order), 0 past the user's last event; rows stay in file order."""
    from trainer.retrieval.model import future_items

    users = np.array(["u", "v", "u", "u", "v", "w"], dtype=object)
    times = np.array([30, 5, 10, 20, 5, 1])
    items = np.array([3, 7, 1, 2, 8, 9])
    # u's events by time: 1 (t10), 2 (t20), 3 (t30); v's: 7, 8 (tie: file order); w's: 9.
    np.testing.assert_array_equal(future_items(items, users, times, 3),
                                  [[3, 0, 0], [7, 8, 0], [1, 2, 3], [2, 3, 0], [8, 0, 0], [9, 0, 0]])
    np.testing.assert_array_equal(future_items(items, users, times, 1), items[:, None])


def test_drawn_future_target_swaps_the_positive_and_its_candidate_inputs():
    """Each row's positive becomes one of its future items, and every candidate-tower input of the
    row is that item's catalogue row (so the candidate tower sees the drawn item)."""
    from trainer import features as F
    from trainer.retrieval.model import FUTURE_ITEMS, draw_future_target

    catalogue = {F.ITEM_ID_IDX: tf.constant([2, 3, 4, 5], tf.int64),
                 "item_genre_idx": tf.constant([[20, 0], [30, 31], [40, 0], [50, 0]], tf.int64)}
    draw = draw_future_target(catalogue, num_items=6, seed=1)
    batch = {F.ITEM_ID_IDX: tf.constant([2, 3, 4], tf.int64),
             "item_genre_idx": tf.constant([[20], [30], [40]], tf.int64),
             FUTURE_ITEMS: tf.constant([[2, 5, 0], [3, 0, 0], [4, 2, 5]], tf.int64)}
    seen = [set(), set(), set()]
    for _ in range(40):
        out = draw(batch)
        assert FUTURE_ITEMS not in out
        for r, item in enumerate(out[F.ITEM_ID_IDX].numpy()):
            seen[r].add(int(item))
            np.testing.assert_array_equal(out["item_genre_idx"].numpy()[r], catalogue["item_genre_idx"].numpy()[item - 2])
    assert seen == [{2, 5}, {3}, {4, 2, 5}]
