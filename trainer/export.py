"""Exported retrieval SavedModels: raw features in, item ids out.

The Transform graph is inside (``tft_layer``), so clients send raw features. One
module class serves both exports; only the top-k layer differs:
- ``retrieval_brute_force``: ``tfrs.layers.factorized_top_k.BruteForce``, stock ops
  only, for stock TensorFlow Serving;
- ``retrieval``: ``tfrs.layers.factorized_top_k.ScaNN`` (built by the index step,
  trainer/index.py), saved with the ``Scann`` op namespace allowed.

What the module stores besides the towers: the candidate embeddings and ids, each
known user's latest history and features (so a known user id alone is enough),
item popularity (the fallback) and item features as strings (for client filters).
Signatures and tensor names come from serving/names.py.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

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


class RetrievalModule(tf.Module):
    """The exported retrieval model; ``topk`` is a BruteForce or ScaNN layer over the candidates."""

    def __init__(self, resolver: QueryResolver, topk_layer, candidates: dict, max_k: int, fetch_k: int,
                 item_feature_keys: list[str], unknown_item_embedding: np.ndarray):
        super().__init__()
        self.resolver, self.topk = resolver, topk_layer
        self.max_k, self.fetch_k = max_k, fetch_k
        ids = candidates["ids"]
        self.candidate_ids = tf.Variable(ids, trainable=False, name="candidate_ids")
        self.candidate_embeddings = tf.Variable(candidates["embeddings"], trainable=False, name="candidate_embeddings")
        self.unknown_item_embedding = tf.constant(unknown_item_embedding)
        self.item_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), -1)
        order = np.argsort(-candidates["counts"], kind="stable")
        self.popular_ids = tf.constant(np.asarray(ids)[order])
        self.popular_counts = tf.constant(candidates["counts"][order].astype(np.float32))
        self.item_feature_keys = list(item_feature_keys)
        self.item_strings = {k: tf.constant(candidates["features"][k]) for k in self.item_feature_keys}

    def _resolve_query(self, inputs: dict) -> dict:
        """Saved as ``resolve_query`` so the index step can wrap this export with ScaNN."""
        query, history, known = self.resolver.resolve(inputs)
        return {names.OUT_EMBEDDING: query, "history": history, names.OUT_KNOWN_USER: known}

    def _recommend(self, inputs: dict) -> dict:
        query, history, known = self.resolver.resolve(inputs)
        scores, ids = self.topk(query, k=self.fetch_k)
        k = tf.minimum(inputs[names.K], self.max_k)
        top_ids, top_scores = finalize_topk(scores, ids, history, inputs[names.EXCLUDE_HISTORY], k)
        return {names.OUT_ITEM_IDS: top_ids, names.OUT_SCORES: top_scores, names.OUT_KNOWN_USER: known}

    def _query_embedding(self, inputs: dict) -> dict:
        return {names.OUT_EMBEDDING: self.resolver.resolve(inputs)[0]}

    def _candidate_embedding(self, item_ids: tf.Tensor) -> dict:
        idx = self.item_table.lookup(item_ids)
        emb = tf.gather(self.candidate_embeddings, tf.maximum(idx, 0))
        unknown = tf.broadcast_to(self.unknown_item_embedding[None, :], tf.shape(emb))
        return {names.OUT_EMBEDDING: tf.where((idx >= 0)[:, None], emb, unknown)}

    def _popular(self, k: tf.Tensor) -> dict:
        k_max = tf.minimum(tf.reduce_max(k), tf.shape(self.popular_ids)[0])
        rows = tf.shape(k)[0]
        ids = tf.tile(self.popular_ids[None, :k_max], [rows, 1])
        counts = tf.tile(self.popular_counts[None, :k_max], [rows, 1])
        valid = tf.range(k_max)[None, :] < k[:, None]
        return {names.OUT_ITEM_IDS: tf.where(valid, ids, ""),
                names.OUT_SCORES: tf.where(valid, counts, -np.inf)}

    def _item_features(self, item_ids: tf.Tensor) -> dict:
        idx = self.item_table.lookup(item_ids)
        known = idx >= 0
        out = {names.OUT_KNOWN_ITEM: known}
        for key in self.item_feature_keys:
            out[key] = tf.where(known, tf.gather(self.item_strings[key], tf.maximum(idx, 0)), "")
        return out

    def attach_resolve_query(self, user_features: dict) -> None:
        self.resolve_query = tf.function(self._resolve_query, input_signature=[query_input_signature(user_features)])

    def signatures(self, user_features: dict) -> dict:
        qspec = query_input_signature(user_features)
        rspec = dict(qspec)
        rspec[names.K] = tf.TensorSpec([None], tf.int32, names.K)
        rspec[names.EXCLUDE_HISTORY] = tf.TensorSpec([None], tf.bool, names.EXCLUDE_HISTORY)
        recommend = tf.function(lambda **kw: self._recommend(kw)).get_concrete_function(**rspec)
        return {
            names.RECOMMEND_SIGNATURE: recommend,
            names.DEFAULT_SIGNATURE: recommend,
            names.QUERY_EMBEDDING_SIGNATURE: tf.function(lambda **kw: self._query_embedding(kw)).get_concrete_function(**qspec),
            names.CANDIDATE_EMBEDDING_SIGNATURE: tf.function(
                lambda item_id: self._candidate_embedding(item_id)).get_concrete_function(
                tf.TensorSpec([None], tf.string, names.ITEM_IDS_INPUT)),
            names.POPULAR_SIGNATURE: tf.function(lambda k: self._popular(k)).get_concrete_function(
                tf.TensorSpec([None], tf.int32, names.K)),
            names.ITEM_FEATURES_SIGNATURE: tf.function(
                lambda item_id: self._item_features(item_id)).get_concrete_function(
                tf.TensorSpec([None], tf.string, names.ITEM_IDS_INPUT)),
        }


def brute_force_layer(embeddings: np.ndarray, ids: np.ndarray, k: int):
    return tfrs.layers.factorized_top_k.BruteForce(k=k).index(
        tf.constant(embeddings), tf.constant(ids))


def save(module: RetrievalModule, export_dir: str, user_features: dict) -> None:
    module.attach_resolve_query(user_features)
    tf.saved_model.save(module, export_dir, signatures=module.signatures(user_features))


class ScannRetrievalModule(tf.Module):
    """The brute-force export, reloaded, with ScaNN answering ``recommend``.

    Every other signature is the reloaded export's own, so the two models agree on
    everything but the approximate top-k.
    """

    def __init__(self, base, scann_layer, max_k: int, fetch_k: int):
        super().__init__()
        self.base, self.topk, self.max_k, self.fetch_k = base, scann_layer, max_k, fetch_k

    def _recommend(self, inputs: dict) -> dict:
        query_keys = self.base.resolve_query.input_signature[0].keys()
        resolved = self.base.resolve_query({k: inputs[k] for k in query_keys})
        scores, ids = self.topk(resolved[names.OUT_EMBEDDING], k=self.fetch_k)
        k = tf.minimum(inputs[names.K], self.max_k)
        top_ids, top_scores = finalize_topk(scores, ids, resolved["history"], inputs[names.EXCLUDE_HISTORY], k)
        return {names.OUT_ITEM_IDS: top_ids, names.OUT_SCORES: top_scores,
                names.OUT_KNOWN_USER: resolved[names.OUT_KNOWN_USER]}

    def save(self, export_dir: str) -> None:
        rspec = dict(self.base.resolve_query.input_signature[0])
        rspec[names.K] = tf.TensorSpec([None], tf.int32, names.K)
        rspec[names.EXCLUDE_HISTORY] = tf.TensorSpec([None], tf.bool, names.EXCLUDE_HISTORY)
        recommend = tf.function(lambda **kw: self._recommend(kw)).get_concrete_function(**rspec)
        signatures = {name: fn for name, fn in self.base.signatures.items()}
        signatures[names.RECOMMEND_SIGNATURE] = recommend
        signatures[names.DEFAULT_SIGNATURE] = recommend
        tf.saved_model.save(self, export_dir, signatures=signatures,
                            options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
