"""The retrieval model's sequence objective (trainer/retrieval/sequence.py): the windows it
cuts from each user's events, the per-prefix encoders it trains, and a trained model."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import features as F
from trainer.encoders import HistoryEncoder
from trainer.hparams import ConfigError, RetrievalHParams
from trainer.retrieval import sequence


def test_windows_hold_each_users_events_in_time_order_latest_window_first():
    # User a: 5 events (out of time order in the file), b: 1 event, c: 3 events; window 2.
    users = np.array([b"a", b"c", b"a", b"b", b"a", b"c", b"a", b"a", b"c"])
    ts = np.array([50, 10, 10, 5, 30, 20, 20, 40, 30])
    items = np.array([15, 31, 11, 99, 13, 32, 12, 14, 33])  # a: 11..15 in time order; c: 31..33
    hours = np.array([5, 1, 1, 9, 3, 2, 2, 4, 3])
    uid = np.array([1, 3, 1, 2, 1, 3, 1, 1, 3])
    cols = {F.ITEM_ID_IDX: items, F.HOUR_OF_DAY: hours, F.USER_ID_IDX: uid}
    out = sequence.build_sequences(cols, users, ts, window=2, per_user_keys=[F.USER_ID_IDX])
    # a: targets 12..15 -> windows [13,14 -> 14,15] (latest) and [11,12 -> 12,13]; b: none; c: one window.
    np.testing.assert_array_equal(out[F.HISTORY_IDX], [[13, 14], [11, 12], [31, 32]])
    np.testing.assert_array_equal(out[sequence.TARGETS], [[14, 15], [12, 13], [32, 33]])
    np.testing.assert_array_equal(out[F.HOUR_OF_DAY], [[4, 5], [2, 3], [2, 3]])  # the target event's context
    np.testing.assert_array_equal(out[F.USER_ID_IDX], [1, 1, 3])
    # Window 3: cut from the latest event back, so the latest window is full and the earliest
    # one is left-padded with 0: [12, 13, 14 -> 13, 14, 15] and [_, _, 11 -> 12].
    out = sequence.build_sequences(cols, users, ts, window=3, per_user_keys=[F.USER_ID_IDX])
    np.testing.assert_array_equal(out[F.HISTORY_IDX], [[12, 13, 14], [0, 0, 11], [0, 31, 32]])
    np.testing.assert_array_equal(out[sequence.TARGETS], [[13, 14, 15], [0, 0, 12], [0, 32, 33]])
    # A padded position has no target and the "unknown" context (what a request without one sends).
    assert out[F.HOUR_OF_DAY][1, 0] == 0 and out[F.HOUR_OF_DAY][1, 2] == 2
    # Stride 1 below window 3: one window per target, each with up to 3 items of history
    # before it; only the last position is a target.
    out = sequence.build_sequences(cols, users, ts, window=3, per_user_keys=[F.USER_ID_IDX], stride=1)
    np.testing.assert_array_equal(out[F.HISTORY_IDX], [[12, 13, 14], [11, 12, 13], [0, 11, 12], [0, 0, 11],
                                                       [0, 31, 32], [0, 0, 31]])
    np.testing.assert_array_equal(out[sequence.TARGETS], [[0, 0, 15], [0, 0, 14], [0, 0, 13], [0, 0, 12],
                                                          [0, 0, 33], [0, 0, 32]])
    np.testing.assert_array_equal(out[F.USER_ID_IDX], [1, 1, 1, 1, 3, 3])
    # Every target appears exactly once whatever the stride.
    for stride in (1, 2, 3):
        out = sequence.build_sequences(cols, users, ts, window=3, per_user_keys=[], stride=stride)
        assert sorted(out[sequence.TARGETS][out[sequence.TARGETS] > 0]) == [12, 13, 14, 15, 32, 33]


def test_no_user_with_two_events_gives_no_windows():
    cols = {F.ITEM_ID_IDX: np.array([1, 2]), F.USER_ID_IDX: np.array([1, 2])}
    out = sequence.build_sequences(cols, np.array([b"a", b"b"]), np.array([1, 2]), 4, [F.USER_ID_IDX])
    assert out[sequence.TARGETS].shape == (0, 4)


def test_latest_items_are_each_users_last_events_in_time_order_right_padded():
    users = np.array(["a", "b", "a", "a", "b", "a"])
    ts = np.array([30, 5, 10, 30, 1, 20])  # a: 10, 20, 30, 30 (the tie in file order)
    items = np.array([3, 52, 1, 4, 51, 2])
    out = sequence.latest_items(users, ts, items, ["a", "b", "nobody"], 3, 0)
    np.testing.assert_array_equal(out, [[2, 3, 4], [51, 52, 0], [0, 0, 0]])
    raw = sequence.latest_items(users, ts, np.array([b"x3", b"y2", b"x1", b"x4", b"y1", b"x2"], dtype=object),
                                ["b", "a"], 5, b"")
    assert raw.tolist() == [[b"y1", b"y2", b"", b"", b""], [b"x1", b"x2", b"x3", b"x4", b""]]


def test_sequence_length_config_is_checked():
    from tests.support.tiny_pipeline import config
    from tfx_pipeline.config import ConfigError as PipelineConfigError

    assert config(sequence_length=8).examples.state_length == 8
    assert config().examples.state_length == config().examples.history_length
    with pytest.raises(PipelineConfigError, match="between history_length"):
        config(sequence_length=3)  # shorter than the per-event history (5)
    from tfx_pipeline.config import parse_config

    raw = {"name": "t", "schema_dir": ".", "examples": {"history_length": 5, "sequence_length": 8},
           "data": {"events": {"path": "x", "columns": {"user": "u", "item": "i", "timestamp": "t"}}}}
    with pytest.raises(PipelineConfigError, match="only trainer.retrieval.objective: sequence"):
        parse_config(raw)  # the in_batch default would never read the longer state


def _encoder(kind):
    tf.keras.utils.set_random_seed(0)
    return HistoryEncoder(kind, tf.keras.layers.Embedding(10, 8), dim=8, max_len=5, heads=2, blocks=2, dropout=0.0)


@pytest.mark.parametrize("kind", ["mean", "gru", "sasrec"])
def test_last_position_is_the_served_encoding_of_the_same_history(kind):
    """Train/serve consistency: the window's last position, what the objective trains on,
    is what ``call`` computes for the same items sent as a (right-padded) history."""
    enc = _encoder(kind)
    seq = enc.call_sequence(tf.constant([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])).numpy()
    served = enc(tf.constant([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])).numpy()
    np.testing.assert_allclose(seq[:, -1], served, rtol=1e-4, atol=1e-5)
    # Causal: changing the later items never changes an earlier position.
    other = enc.call_sequence(tf.constant([[4, 5, 6, 2, 1]])).numpy()
    np.testing.assert_allclose(seq[1, :3], other[0, :3], rtol=1e-4, atol=1e-5)
    assert np.abs(seq[1, 3:] - other[0, 3:]).max() > 1e-4


@pytest.mark.parametrize("kind", ["mean", "gru"])
def test_every_position_is_the_encoding_of_its_prefix(kind):
    """For the position-free encoders every prefix is encoded as that history would be served."""
    enc = _encoder(kind)
    seq = enc.call_sequence(tf.constant([[0, 1, 2, 3, 4]])).numpy()[0]
    for t in range(1, 5):
        served = enc(tf.constant([list(range(1, t + 1))])).numpy()[0]
        np.testing.assert_allclose(seq[t], served, rtol=1e-4, atol=1e-5)


def test_attention_encoder_is_refused_for_the_sequence_objective():
    with pytest.raises(ConfigError, match="causal form"):
        RetrievalHParams(objective="sequence", history_encoder="attention")
    with pytest.raises(ConfigError, match="objective"):
        RetrievalHParams(objective="next_item")
    with pytest.raises(ValueError, match="per-prefix"):
        _encoder("attention").call_sequence(tf.constant([[1, 2]]))


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    from tests.support.tiny_pipeline import train_sequential

    # examples.sequence_length 8 over the per-event history of 5: the windows, the validation and
    # eval queries and the served state are 8 items long (the other tests of this model hold at
    # any length).
    return train_sequential(str(tmp_path_factory.mktemp("sequence_objective")),
                            {"objective": "sequence", "history_encoder": "gru", "epochs": 12,
                             "sequence_batch_size": 16, "learning_rate": 0.01, "early_stopping_patience": 12},
                            sequence_length=SEQUENCE_LENGTH)


SEQUENCE_LENGTH = 8


def test_sequence_objective_learns_the_order_popularity_cannot(sequential):
    _, metrics, _ = sequential
    model, pop = metrics["model"], metrics["popularity"]
    assert model["recall@10"] > 2 * pop["recall@10"] and model["recall@10"] > 0.5, metrics
    assert model["ndcg@10"] > 2 * pop["ndcg@10"], metrics
    assert metrics["selection"]["validation"] and metrics["best_epoch"] >= 1


def test_sequence_model_exports_the_same_signatures(sequential):
    from serving import names

    _, _, serving_dir = sequential
    model = tf.saved_model.load(serving_dir)
    assert names.RECOMMEND_SIGNATURE in model.signatures
    assert model.candidate_embeddings.shape[0] == len(model.candidate_ids.numpy())


def test_served_state_and_query_hold_sequence_length_items(sequential):
    """Longer than the per-event rows: the user-state rows keep the last 8 items, the export's
    query reads all 8 (an item 7 places back still moves the query), and a known user sent
    without history is queried with that stored state."""
    from serving import names
    from trainer import raw_data
    from trainer.artifacts import USER_STATE_SPLIT

    tiny, _, serving_dir = sequential
    assert tiny.history_length < SEQUENCE_LENGTH
    spec = {F.USER_ID: tf.io.FixedLenFeature([1], tf.string), F.HISTORY_ITEM_IDS: tf.io.VarLenFeature(tf.string)}
    state = raw_data.read_numpy(raw_data.split_files(tiny.examples_uri, USER_STATE_SPLIT), spec)
    lengths = (state[F.HISTORY_ITEM_IDS] != b"").sum(axis=1)
    assert lengths.max() == SEQUENCE_LENGTH  # 15 events a user: every state is full
    train_rows = raw_data.read_numpy(raw_data.split_files(tiny.examples_uri, "train"),
                                     {F.HISTORY_ITEM_IDS: tf.io.VarLenFeature(tf.string)})
    assert (train_rows[F.HISTORY_ITEM_IDS] != b"").sum(axis=1).max() == tiny.history_length

    embed = tf.saved_model.load(serving_dir).signatures[names.QUERY_EMBEDDING_SIGNATURE]
    user_features = {k: v for k, v in tiny.side_features.items() if k.startswith(F.USER_FEATURE_PREFIX)}

    def query(user: bytes, history: list[bytes]):
        inputs = {names.USER_ID: tf.constant([user]),
                  names.HISTORY_ITEM_IDS: tf.constant([history or [b""]]),
                  names.HOUR_OF_DAY: tf.constant([-1], tf.int64), names.DAY_OF_WEEK: tf.constant([-1], tf.int64),
                  names.HOURS_SINCE_PREV_EVENT: tf.constant([-1.0])}
        for key, kind in user_features.items():
            inputs[key] = tf.constant([np.nan], tf.float32) if kind == F.NUMERIC else tf.constant([b""])
        return embed(**inputs)[names.OUT_EMBEDDING].numpy()[0]

    items = [i.encode() for i in tiny.item_ids]
    walk = items[10:18]
    other = [items[50], *walk[1:]]  # differs only in the oldest of 8, beyond the per-event history of 5
    assert np.abs(query(b"someone-new", walk) - query(b"someone-new", other)).max() > 1e-4
    # A history longer than 8 is cut to its last 8: the item 9 places back changes nothing.
    np.testing.assert_allclose(query(b"someone-new", [items[55], *walk]), query(b"someone-new", walk),
                               rtol=1e-5, atol=1e-6)
    user, stored = state[F.USER_ID][0], [h for h in state[F.HISTORY_ITEM_IDS][0] if h]
    np.testing.assert_allclose(query(user, []), query(user, stored), rtol=1e-5, atol=1e-6)
