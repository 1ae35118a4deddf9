"""Query resolution shared by the retrieval and ranking exports.

Raw query inputs (user id, history, context, user side features; names from
serving/names.py) -> the Transform graph -> model inputs, with missing inputs
filled from the user's stored state (latest history and features), so a known user
id alone is enough. Also the top-k finishing step both exports use.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from serving import names
from trainer import features as F
from trainer.model_inputs import FeatureLayout, to_model_inputs


def query_input_signature(user_features: dict) -> dict:
    """TensorSpecs of the raw query inputs shared by recommend / query_embedding / score."""
    spec = {
        names.USER_ID: tf.TensorSpec([None], tf.string, names.USER_ID),
        names.HISTORY_ITEM_IDS: tf.TensorSpec([None, None], tf.string, names.HISTORY_ITEM_IDS),
        names.HOUR_OF_DAY: tf.TensorSpec([None], tf.int64, names.HOUR_OF_DAY),
        names.DAY_OF_WEEK: tf.TensorSpec([None], tf.int64, names.DAY_OF_WEEK),
        names.HOURS_SINCE_PREV_EVENT: tf.TensorSpec([None], tf.float32, names.HOURS_SINCE_PREV_EVENT),
    }
    for key, kind in sorted(user_features.items()):
        dtype = tf.float32 if kind == F.NUMERIC else tf.string
        spec[key] = tf.TensorSpec([None], dtype, key)
    return spec


def dense_to_sparse_strings(x: tf.Tensor) -> tf.SparseTensor:
    """[B, L] strings padded with "" -> SparseTensor without the padding."""
    return tf.sparse.from_dense(x)


def raw_to_model_inputs(raw: dict, tft_layer, layout: FeatureLayout, list_keys=()) -> dict:
    """Raw dense batch (scalars [B], lists [B, L] padded "") -> model inputs."""
    feed = {}
    for key, value in raw.items():
        if key == F.HISTORY_ITEM_IDS or key in list_keys:
            feed[key] = dense_to_sparse_strings(value)
        else:
            feed[key] = tf.expand_dims(value, -1)
    return to_model_inputs(tft_layer(feed), layout)


def last_n_items(history: tf.Tensor, n: int) -> tf.Tensor:
    """[B, H] strings ("" padding anywhere) -> [B, <=n] the last n non-empty items."""
    ragged = tf.ragged.boolean_mask(history, tf.not_equal(history, ""))
    return ragged[:, -n:].to_tensor(default_value="")


def pad_columns(x: tf.Tensor, width) -> tf.Tensor:
    return tf.pad(x, [[0, 0], [0, tf.maximum(width - tf.shape(x)[1], 0)]], constant_values="")


def finalize_topk(scores: tf.Tensor, ids: tf.Tensor, history: tf.Tensor, exclude: tf.Tensor,
                  k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Drops history items where asked, keeps each row's own k.

    Args:
      scores: [B, C] candidate scores; ids: [B, C] candidate ids (best first or not).
      history: [B, H] item ids ("" padding); exclude: [B] bool; k: [B] int32.
    Returns:
      ids [B, max(k)] ("" past a row's k) and scores [B, max(k)] (-inf past k).
    """
    in_history = tf.reduce_any(tf.equal(ids[:, :, None], history[:, None, :]) & tf.not_equal(history, "")[:, None, :], -1)
    masked = tf.where(in_history & exclude[:, None], tf.fill(tf.shape(scores), -np.inf), scores)
    k_max = tf.minimum(tf.reduce_max(tf.maximum(k, 0)), tf.shape(scores)[1])
    top_scores, top_pos = tf.math.top_k(masked, k=k_max)
    top_ids = tf.gather(ids, top_pos, batch_dims=1)
    valid = (tf.range(k_max)[None, :] < tf.cast(k, tf.int32)[:, None]) & tf.math.is_finite(top_scores)
    return (tf.where(valid, top_ids, tf.fill(tf.shape(top_ids), "")),
            tf.where(valid, top_scores, tf.fill(tf.shape(top_scores), -np.inf)))


class QueryResolver(tf.Module):
    """Raw query inputs -> (query embedding [B, D], effective history [B, H], known_user [B]).

    ``resolve_inputs`` returns the resolved query model inputs instead of the embedding.

    Missing inputs ("" / NaN / all-"" history) fall back to the user's stored state.
    """

    def __init__(self, tft_layer, query_tower, layout: FeatureLayout, user_features: dict,
                 user_state: dict, history_length: int):
        super().__init__()
        self.tft_layer, self.query_tower, self.layout = tft_layer, query_tower, layout
        self.user_features, self.history_length = dict(user_features), history_length
        ids = user_state[F.USER_ID]
        self.user_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), -1)
        self.state_history = tf.constant(user_state[F.HISTORY_ITEM_IDS])
        self.state_features = {k: tf.constant(user_state[k]) for k in sorted(user_features)}

    def resolve(self, inputs: dict, fallback: bool = True):
        """``fallback=False`` ignores stored state (offline evaluation: it holds the future)."""
        model_inputs, history, known = self.resolve_inputs(inputs, fallback)
        query = self.query_tower(model_inputs, training=False)
        return query, history, known

    def resolve_inputs(self, inputs: dict, fallback: bool = True):
        """Like ``resolve`` but stops before the tower: (query model inputs, history [B, H], known [B]).

        The model inputs are the Transform outputs of the resolved raw query features
        (user id, user side features, history, context), shifted as in model_inputs.py;
        the ranking export feeds them to its own model. ``query_tower`` may be None here.
        """
        idx = self.user_table.lookup(inputs[names.USER_ID])
        known = idx >= 0 if fallback else tf.zeros_like(idx, tf.bool)
        safe = tf.maximum(idx, 0)
        given = inputs[names.HISTORY_ITEM_IDS]
        stored = tf.gather(self.state_history, safe)
        width = tf.maximum(tf.shape(given)[1], tf.shape(stored)[1])
        given, stored = pad_columns(given, width), pad_columns(stored, width)
        use_stored = known & tf.reduce_all(tf.equal(given, ""), axis=1)
        history = tf.where(use_stored[:, None], stored, given)
        raw = {
            F.USER_ID: inputs[names.USER_ID],
            F.HISTORY_ITEM_IDS: last_n_items(history, self.history_length),
            F.HOUR_OF_DAY: inputs[names.HOUR_OF_DAY],
            F.DAY_OF_WEEK: inputs[names.DAY_OF_WEEK],
            F.HOURS_SINCE_PREV_EVENT: inputs[names.HOURS_SINCE_PREV_EVENT],
        }
        for key, kind in sorted(self.user_features.items()):
            value, saved = inputs[key], tf.gather(self.state_features[key], safe)
            missing = tf.math.is_nan(value) if kind == F.NUMERIC else tf.equal(value, "")
            raw[key] = tf.where(missing & known, saved, value)
        return raw_to_model_inputs(raw, self.tft_layer, self.layout), history, known


UNKNOWN_ITEM_ID = b"__unknown_item__"


def unknown_item_raw(items: dict, item_features: dict) -> dict:
    """One raw item row with an id outside the vocabulary and empty features."""
    raw = {F.ITEM_ID: tf.constant([UNKNOWN_ITEM_ID])}
    for key, kind in item_features.items():
        if kind == F.NUMERIC:
            raw[key] = tf.constant([np.nan], tf.float32)
        elif kind == F.MULTI_VALUED:
            raw[key] = tf.constant([[b""]])
        else:
            raw[key] = tf.constant([b""])
    return raw
