"""A request without context is scored with what training saw as "unknown" context.

The server and the client send -1 for hour / weekday / hours since the previous event
when they are unknown (serving/names.py). The Transform graph maps that to index 0 of the
hour and day embeddings and to a recency z of 0 (the train mean); the trainers' context
dropout replaces a share of training rows' context with exactly those values, so those
embedding rows are trained.
"""

import numpy as np
import tensorflow as tf

from serving import names
from trainer import features as F
from trainer.model_inputs import UNKNOWN_CONTEXT, drop_context


def _resolve(tiny, hour, day, hours):
    import tensorflow_transform as tft

    from trainer.model_inputs import layout_from_transform
    from trainer.query import QueryResolver

    out = tft.TFTransformOutput(tiny.transform_dir)
    layout = layout_from_transform(out, tiny.side_features)
    user_features = {k: v for k, v in tiny.side_features.items() if k.startswith(F.USER_FEATURE_PREFIX)}
    state = {F.USER_ID: np.array([b"u0"], dtype=object), F.HISTORY_ITEM_IDS: np.array([[b"i1"]], dtype=object),
             **{k: (np.array([30.0], np.float32) if kind == F.NUMERIC else np.array([b"F"], dtype=object))
                for k, kind in user_features.items()}}
    resolver = QueryResolver(out.transform_features_layer(), None, layout, user_features, state, tiny.history_length)
    n = len(hour)
    inputs = {names.USER_ID: tf.constant([b"u0"] * n), names.HISTORY_ITEM_IDS: tf.constant([[b"i1"]] * n),
              names.HOUR_OF_DAY: tf.constant(hour, tf.int64), names.DAY_OF_WEEK: tf.constant(day, tf.int64),
              names.HOURS_SINCE_PREV_EVENT: tf.constant(hours, tf.float32),
              **{k: (tf.constant([np.nan] * n, tf.float32) if kind == F.NUMERIC else tf.constant([b""] * n))
                 for k, kind in user_features.items()}}
    model_inputs, _, _ = resolver.resolve_inputs(inputs)
    return {k: model_inputs[k].numpy() for k in UNKNOWN_CONTEXT}


def test_transform_maps_unknown_context_to_the_trained_unknown_values(tiny_pipeline):
    got = _resolve(tiny_pipeline, hour=[-1, 5], day=[-1, 2], hours=[-1.0, 0.0])
    for key, unknown in UNKNOWN_CONTEXT.items():
        assert got[key][0] == unknown, (key, got)
    # A known context is not the unknown one: hour 5 -> index 6, weekday 2 -> 3, and
    # "0 hours since the previous event" is below the train mean, not the mean itself.
    assert got[F.HOUR_OF_DAY][1] == 6 and got[F.DAY_OF_WEEK][1] == 3
    assert got[F.RECENCY_Z][1] < -0.1, got


def _batch(n):
    return {F.HOUR_OF_DAY: tf.fill([n], tf.constant(7, tf.int64)), F.DAY_OF_WEEK: tf.fill([n], tf.constant(3, tf.int64)),
            F.RECENCY_Z: tf.fill([n], 1.5), F.ITEM_ID_IDX: tf.range(n, dtype=tf.int64)}


def test_context_dropout_replaces_whole_rows_at_the_rate():
    out = drop_context(0.3, seed=1)(_batch(4000))
    dropped = out[F.HOUR_OF_DAY].numpy() == 0
    assert 0.25 < dropped.mean() < 0.35
    # The row's whole context goes at once, and nothing else changes.
    np.testing.assert_array_equal(dropped, out[F.DAY_OF_WEEK].numpy() == 0)
    np.testing.assert_array_equal(dropped, out[F.RECENCY_Z].numpy() == 0.0)
    np.testing.assert_array_equal(out[F.ITEM_ID_IDX].numpy(), np.arange(4000))
    kept = out[F.HOUR_OF_DAY].numpy()[~dropped]
    assert np.all(kept == 7)


def test_context_dropout_off_and_batches_without_context_are_unchanged():
    batch = _batch(10)
    assert drop_context(0.0, seed=1)(batch) is batch
    no_context = {F.ITEM_ID_IDX: tf.range(3, dtype=tf.int64)}
    assert drop_context(0.5, seed=1)(no_context) is no_context


def test_context_dropout_rate_is_checked():
    import pytest

    from trainer.hparams import trainer_config
    from trainer.typed_config import ConfigError

    with pytest.raises(ConfigError, match="context_dropout"):
        trainer_config({"retrieval": {"context_dropout": 1.0}})
    with pytest.raises(ConfigError, match="context_dropout"):
        trainer_config({"ranking": {"context_dropout": -0.1}})


def _query_embeddings(fn, users, side, hour, day, hours):
    n = len(users)
    inputs = {names.USER_ID: tf.constant([u.encode() for u in users]),
              names.HISTORY_ITEM_IDS: tf.constant([[b""]] * n),
              names.HOUR_OF_DAY: tf.constant([hour] * n, tf.int64), names.DAY_OF_WEEK: tf.constant([day] * n, tf.int64),
              names.HOURS_SINCE_PREV_EVENT: tf.constant([hours] * n, tf.float32)}
    for key, kind in side.items():
        if key.startswith(F.USER_FEATURE_PREFIX):
            inputs[key] = tf.constant([np.nan] * n, tf.float32) if kind == F.NUMERIC else tf.constant([b""] * n)
    q = fn(**inputs)["embedding"].numpy()
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _share_inside_known_contexts(fn, users, side, probe=(-1, -1, -1.0)) -> float:
    """Share of users whose query with context ``probe`` (default: none) is at least as close to the centre of their
    known-context queries (36 hour x weekday x recency combinations) as the closest three
    quarters of those (their 25th percentile of cosine to the centre)."""
    known = np.stack([_query_embeddings(fn, users, side, h, d, r)
                      for h in (0, 6, 12, 18) for d in (0, 3, 6) for r in (0.5, 24.0, 240.0)])  # [C, U, D]
    centre = known.mean(axis=0)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    farthest = np.quantile(np.einsum("cud,ud->cu", known, centre), 0.25, axis=0)
    unknown = np.einsum("ud,ud->u", _query_embeddings(fn, users, side, *probe), centre)
    return float(np.mean(unknown >= farthest))


def test_a_request_without_context_scores_like_the_trained_contexts(trained_retrieval, tiny_pipeline):
    """Score level: the query of a request with no context lies among the queries of the
    contexts training saw, for (nearly) every user; and the check can fail: a context far
    outside what training saw (10,000 hours since the previous event) lands outside."""
    out, _, side = trained_retrieval
    loaded = tf.saved_model.load(str(out / "model" / "Format-Serving"))  # keeps the variables alive
    fn = loaded.signatures["query_embedding"]
    users = list(tiny_pipeline.user_ids)
    inside = _share_inside_known_contexts(fn, users, side)
    assert inside >= 0.9, inside
    outlier = _share_inside_known_contexts(fn, users, side, probe=(6, 3, 10_000.0))
    assert outlier < 0.5, (inside, outlier)


def test_an_unseen_user_lands_on_the_row_user_id_dropout_trains(tiny_pipeline):
    """user_id_dropout's row (layout.num_users - 1) is exactly where Transform maps a user it has
    never seen; a known user does not land there."""
    import tensorflow_transform as tft

    from trainer.model_inputs import layout_from_transform
    from trainer.query import raw_to_model_inputs

    out = tft.TFTransformOutput(tiny_pipeline.transform_dir)
    layout = layout_from_transform(out, tiny_pipeline.side_features)
    known = next(iter(tiny_pipeline.user_ids))
    raw = {F.USER_ID: tf.constant([b"never-seen-user", known.encode() if isinstance(known, str) else known]),
           F.HISTORY_ITEM_IDS: tf.constant([[b""], [b""]]), F.HOUR_OF_DAY: tf.constant([1, 1], tf.int64),
           F.DAY_OF_WEEK: tf.constant([1, 1], tf.int64), F.HOURS_SINCE_PREV_EVENT: tf.constant([1.0, 1.0])}
    for key, kind in tiny_pipeline.side_features.items():
        if key.startswith(F.USER_FEATURE_PREFIX):
            raw[key] = tf.constant([30.0, 30.0]) if kind == F.NUMERIC else tf.constant([b"F", b"F"])
    ids = raw_to_model_inputs(raw, out.transform_features_layer(), layout)[F.USER_ID_IDX].numpy().ravel()
    assert ids[0] == layout.num_users - 1 and 0 < ids[1] < layout.num_users - 1, (ids, layout.num_users)


def test_user_id_dropout_replaces_the_id_at_the_rate_and_nothing_else():
    import pytest

    from trainer.hparams import trainer_config
    from trainer.model_inputs import drop_user_id
    from trainer.typed_config import ConfigError

    batch = {**_batch(4000), F.USER_ID_IDX: tf.fill([4000], tf.constant(5, tf.int64))}
    out = drop_user_id(0.3, unknown_index=99, seed=1)(batch)
    ids = out[F.USER_ID_IDX].numpy()
    assert set(np.unique(ids)) == {5, 99} and 0.25 < (ids == 99).mean() < 0.35
    for key in (F.HOUR_OF_DAY, F.DAY_OF_WEEK, F.RECENCY_Z, F.ITEM_ID_IDX):
        np.testing.assert_array_equal(out[key].numpy(), batch[key].numpy())
    assert drop_user_id(0.0, 99, seed=1)(batch) is batch
    with pytest.raises(ConfigError, match="user_id_dropout"):
        trainer_config({"retrieval": {"user_id_dropout": 1.0}})
