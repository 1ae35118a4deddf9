"""Towers, loss corrections and top-k post-processing on tiny hand-made tensors."""

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

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
    for kind in ("mean", "gru", "attention"):
        enc = HistoryEncoder(kind, table, dim=4, max_len=5)
        a = enc(tf.constant([[1, 2, 3, 0, 0]]))
        b = enc(tf.constant([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0]]))
        assert a.shape == (1, 4) and b.shape == (2, 4)
        np.testing.assert_allclose(a.numpy()[0], b.numpy()[0], rtol=1e-5, atol=1e-6)


def _softmax_xent_sum(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.trace(logp)


def test_logq_correction_matches_hand_computation():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    c = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], np.float32)
    p = np.array([0.5, 0.1, 0.4], np.float32)
    task = tfrs.tasks.Retrieval()
    plain = float(task(tf.constant(q), tf.constant(c), compute_metrics=False))
    corrected = float(task(tf.constant(q), tf.constant(c), candidate_sampling_probability=tf.constant(p),
                           compute_metrics=False))
    logits = q @ c.T
    np.testing.assert_allclose(plain, _softmax_xent_sum(logits), rtol=1e-5)
    np.testing.assert_allclose(corrected, _softmax_xent_sum(logits - np.log(p)[None, :]), rtol=1e-5)


def test_accidental_hits_are_not_negatives():
    q = np.eye(2, dtype=np.float32)
    c = np.eye(2, dtype=np.float32)
    ids = tf.constant([7, 7])  # the same item twice in the batch
    task = tfrs.tasks.Retrieval(remove_accidental_hits=True)
    loss = float(task(tf.constant(q), tf.constant(c), candidate_ids=ids, compute_metrics=False))
    # Each row's other column is the same item: masked out, so each row's loss is -log(1) = 0.
    np.testing.assert_allclose(loss, 0.0, atol=1e-5)


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
