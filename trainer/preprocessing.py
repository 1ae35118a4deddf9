"""preprocessing_fn: the single implementation of feature logic.

Runs inside Transform (analyzed on the train split) and travels inside every
exported SavedModel as the Transform graph, so training and serving can't skew.
Which side features exist, and of what kind, comes from the dataset config via
Transform's ``custom_config``: ``{"side_features": {key: kind}}``.

Outputs (names from trainer/features.py):
  user_id_idx [B] int64, item_id_idx [B] int64    vocab index, OOV bucket last
  history_item_ids_idx  Sparse [B, H] int64        same vocabulary as item_id
  hour_of_day, day_of_week [B] int64               value + 1; 0 = unknown (-1 in)
  hours_since_prev_event_z [B] float32             z-score of log1p(hours); 0 (the
                                                   train mean) when unknown (< 0 in)
  <cat>_idx [B] int64, <multi>_idx Sparse [B, M]   vocab index with OOV bucket
  <num>_z [B] float32 (NaN in -> 0), <num>_bucket [B] int64 (quantile bucket)
  <text>_tokens Sparse [B, T] int64                lower-cased word tokens
  rating [B] float32, engaged [B] int64            labels (absent at serving)
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from trainer import features as F


def _dense(x: tf.Tensor | tf.SparseTensor, default) -> tf.Tensor:
    """[B, 1] dense or sparse -> [B]."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(tf.sparse.reset_shape(x, [x.dense_shape[0], 1]), default_value=default)
    return tf.reshape(x, [-1])


def _tokens(text: tf.Tensor) -> tf.SparseTensor:
    clean = tf.strings.regex_replace(tf.strings.lower(text), r"[^a-z0-9]+", " ")
    return tf.strings.split(clean).to_sparse()


def _numeric(x: tf.Tensor, key: str, out: dict) -> None:
    x = tf.cast(x, tf.float32)
    z = tft.scale_to_z_score(x)
    out[key + F.Z_SUFFIX] = tf.where(tf.math.is_nan(z), tf.zeros_like(z), z)
    out[key + F.BUCKET_SUFFIX] = tft.bucketize(x, F.NUM_NUMERIC_BUCKETS)


def preprocessing_fn(inputs: dict, custom_config: dict) -> dict:
    side = dict(custom_config.get("side_features", {}))
    out: dict = {}

    user = _dense(inputs[F.USER_ID], "")
    out[F.USER_ID_IDX] = tft.compute_and_apply_vocabulary(
        user, num_oov_buckets=F.OOV_BUCKETS, vocab_filename=F.USER_VOCAB)

    item = _dense(inputs[F.ITEM_ID], "")
    item_vocab = tft.vocabulary(item, vocab_filename=F.ITEM_VOCAB)
    out[F.ITEM_ID_IDX] = tft.apply_vocabulary(item, item_vocab, num_oov_buckets=F.OOV_BUCKETS)
    out[F.HISTORY_IDX] = tft.apply_vocabulary(
        inputs[F.HISTORY_ITEM_IDS], item_vocab, num_oov_buckets=F.OOV_BUCKETS)

    hour = _dense(inputs[F.HOUR_OF_DAY], -1)
    out[F.HOUR_OF_DAY] = tf.clip_by_value(hour, -1, F.HOURS_IN_DAY - 1) + 1
    day = _dense(inputs[F.DAY_OF_WEEK], -1)
    out[F.DAY_OF_WEEK] = tf.clip_by_value(day, -1, F.DAYS_IN_WEEK - 1) + 1
    hours = _dense(inputs[F.HOURS_SINCE_PREV_EVENT], 0.0)
    hours = tf.cast(hours, tf.float32)
    recency = tft.scale_to_z_score(tf.math.log1p(tf.maximum(hours, 0.0)))
    # Unknown (what a request without context sends, -1): the train mean, the value the
    # trainers' context dropout trains with (trainer/model_inputs.py), not "0 hours ago".
    out[F.RECENCY_Z] = tf.where(hours < 0.0, tf.zeros_like(recency), recency)

    for key, kind in sorted(side.items()):
        x = inputs[key]
        if kind == F.CATEGORICAL:
            out[key + F.IDX_SUFFIX] = tft.compute_and_apply_vocabulary(
                _dense(x, ""), num_oov_buckets=F.OOV_BUCKETS, vocab_filename=key)
        elif kind == F.MULTI_VALUED:
            out[key + F.IDX_SUFFIX] = tft.compute_and_apply_vocabulary(
                x, num_oov_buckets=F.OOV_BUCKETS, vocab_filename=key)
        elif kind == F.TEXT:
            out[key + F.TOKENS_SUFFIX] = tft.compute_and_apply_vocabulary(
                _tokens(_dense(x, "")), num_oov_buckets=F.OOV_BUCKETS, vocab_filename=key, frequency_threshold=2)
        elif kind == F.NUMERIC:
            _numeric(_dense(x, float("nan")), key, out)
        else:
            raise ValueError(f"feature {key!r}: unknown kind {kind!r}")

    if F.RATING_LABEL in inputs:
        out[F.RATING_LABEL] = tf.cast(_dense(inputs[F.RATING_LABEL], 0.0), tf.float32)
    if F.ENGAGED_LABEL in inputs:
        out[F.ENGAGED_LABEL] = _dense(inputs[F.ENGAGED_LABEL], 0)
    return out
