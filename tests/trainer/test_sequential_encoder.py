"""The SASRec-style history encoder: causal and order-aware, trains on a log where order
is everything, and its export answers from the history sent at request time."""

import numpy as np
import pytest
import tensorflow as tf

from serving import names
from trainer import features as F
from trainer.encoders import HistoryEncoder


def _encoder():
    tf.keras.utils.set_random_seed(0)
    return HistoryEncoder("sasrec", tf.keras.layers.Embedding(10, 8), dim=8, max_len=5, heads=2, blocks=2,
                          dropout=0.0)


def test_output_is_the_latest_position_and_ignores_padding():
    enc = _encoder()
    a = enc(tf.constant([[1, 2, 3, 0, 0]]))
    b = enc(tf.constant([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0]]))
    np.testing.assert_allclose(a.numpy()[0], b.numpy()[0], rtol=1e-5, atol=1e-6)
    # Order matters (a mean would not see it); the same items at other recencies differ.
    c = enc(tf.constant([[3, 2, 1, 0, 0]]))
    assert np.abs(a.numpy() - c.numpy()).max() > 1e-3
    # Longer padding does not change the encoding (positions count back from the latest item).
    wide = enc(tf.constant([[1, 2, 3, 0, 0, 0, 0]]))
    np.testing.assert_allclose(a.numpy(), wide.numpy(), rtol=1e-5, atol=1e-6)


def test_empty_history_gets_its_own_vector_not_nan():
    enc = _encoder()
    out = enc(tf.constant([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], enc.sequence.empty.numpy())
    assert np.abs(out[0] - out[1]).max() > 1e-3
    # A batch in which every history is empty may come as [B, 0].
    none = enc(tf.zeros([3, 0], tf.int64)).numpy()
    np.testing.assert_allclose(none, np.broadcast_to(enc.sequence.empty.numpy(), (3, 8)))


def test_causal_mask_earlier_positions_do_not_see_later_items():
    """The encoding of a history is the same as the encoding of its prefix would be at that
    position: replacing items after position p never changes the output at p."""
    enc = _encoder()
    emb = enc.item_embedding(tf.constant([[1, 2, 3, 4, 5], [1, 2, 3, 9, 8]]))
    seq = enc.sequence
    valid = tf.ones([2, 5], tf.bool)
    length = 5
    back = 5 - tf.range(length)[None, :]
    x = emb * tf.sqrt(8.0) + seq.positions(tf.broadcast_to(back, [2, 5]))
    causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
    mask = tf.logical_and(causal[None], valid[:, None, :])
    for block in seq.blocks:
        x = block(x, mask)
    x = x.numpy()
    np.testing.assert_allclose(x[0, :3], x[1, :3], rtol=1e-5, atol=1e-5)
    assert np.abs(x[0, 3:] - x[1, 3:]).max() > 1e-3


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    from tests.support.tiny_pipeline import train_sequential

    return train_sequential(str(tmp_path_factory.mktemp("sequential")),
                            {"history_encoder": "sasrec", "epochs": 20, "batch_size": 64, "learning_rate": 0.01,
                             "early_stopping_patience": 20})


def test_sequential_encoder_learns_the_order_popularity_cannot(sequential):
    _, metrics, _ = sequential
    model, pop = metrics["model"], metrics["popularity"]
    assert model["recall@10"] > 2 * pop["recall@10"] and model["recall@10"] > 0.6, metrics
    assert model["ndcg@10"] > 2 * pop["ndcg@10"], metrics


def test_export_answers_from_the_request_history(sequential):
    tiny, _, serving_dir = sequential
    model = tf.saved_model.load(serving_dir)
    rec = model.signatures[names.RECOMMEND_SIGNATURE]
    items = tiny.item_ids
    user_features = {k: v for k, v in tiny.side_features.items() if k.startswith(F.USER_FEATURE_PREFIX)}

    def top(history):
        inputs = {
            names.USER_ID: tf.constant([b"someone-new"]),
            names.HISTORY_ITEM_IDS: tf.constant([[h.encode() for h in history]]),
            names.HOUR_OF_DAY: tf.constant([-1], tf.int64), names.DAY_OF_WEEK: tf.constant([-1], tf.int64),
            names.HOURS_SINCE_PREV_EVENT: tf.constant([-1.0]),
            names.K: tf.constant([5], tf.int32), names.EXCLUDE_HISTORY: tf.constant([True]),
        }
        for key, kind in user_features.items():
            inputs[key] = tf.constant([np.nan], tf.float32) if kind == F.NUMERIC else tf.constant([b""])
        return [i.decode() for i in rec(**inputs)[names.OUT_ITEM_IDS].numpy()[0]]

    walk_a, walk_b = items[10:14], items[40:44]
    a, b = top(walk_a), top(walk_b)
    assert a != b
    # The next item of each walk is among its top 5 (of 56 unseen items).
    assert items[14] in a and items[44] in b, (a, b)
