"""Exported retrieval SavedModels: raw features in, item ids out.

The Transform graph is inside (``tft_layer``), so clients send raw features. One
module class serves both exports; only the top-k layer differs:
- ``retrieval_brute_force``: ``tfrs.layers.factorized_top_k.BruteForce``, stock ops
  only, for stock TensorFlow Serving;
- ``retrieval``: ``tfrs.layers.factorized_top_k.ScaNN`` (built by the index step,
  trainer/retrieval/index.py), saved with the ``Scann`` op namespace allowed.

Both rank by ``q . c`` plus each candidate's popularity prior (trainer/retrieval/prior.py) plus,
when the run picked one, the ALS blend (trainer/retrieval/als_blend.py): the top-k layer indexes
``[c, v, bias]`` (``served_vectors``) and is queried with ``[q, w u, s]`` (``u``: the user id's ALS
row, zeros for an id ALS has none for; ``s``: the prior's scale of the query's activity bucket);
the ``query_embedding`` and ``candidate_embedding`` signatures return the model's own vectors.

What the module stores besides the towers: the candidate embeddings, biases and ids, each
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
from trainer.retrieval import als_blend, prior
from trainer.query import QueryResolver, finalize_topk, query_input_signature, raw_to_model_inputs
from trainer.query import unknown_item_raw


# ``resolve_query``'s output with what the top-k layer is queried with (``_served_query``).
SERVED_QUERY = "served_query"


class RetrievalModule(tf.Module):
    """The exported retrieval model; ``topk`` is a BruteForce or ScaNN layer over the candidates
    as ``served_candidates`` returns them (embedding and prior bias)."""

    def __init__(self, resolver: QueryResolver, topk_layer, candidates: dict, max_k: int, fetch_k: int,
                 item_feature_keys: list[str], unknown_item_embedding: np.ndarray):
        """``candidates["als_block"]``: an ``als_blend.AlsBlock`` served in the scores, or None/absent."""
        super().__init__()
        self.resolver, self.topk = resolver, topk_layer
        self.max_k, self.fetch_k = max_k, fetch_k
        ids = candidates["ids"]
        self.candidate_ids = tf.Variable(ids, trainable=False, name="candidate_ids")
        self.candidate_embeddings = tf.Variable(candidates["embeddings"], trainable=False, name="candidate_embeddings")
        self.candidate_bias = tf.Variable(candidate_bias(candidates), trainable=False, name="candidate_bias")
        # The query's last component: its share of the stored bias, (warm, cold) (trainer/retrieval/prior.py).
        # Each activity bucket's scale, and where the buckets start (history items; bucket 0: none).
        self.prior_scales = tf.Variable(np.asarray(candidates.get("prior_scales", (1.0, 1.0)), np.float32),
                                        trainable=False, name="prior_scales")
        self.prior_edges = tf.Variable(np.asarray(candidates.get("prior_edges", (1,)), np.int64), trainable=False,
                                       name="prior_edges")
        self.unknown_item_embedding = tf.constant(unknown_item_embedding)
        block = candidates.get("als_block")
        self.blended = block is not None
        if self.blended:  # the ALS block: item factors beside the embeddings, w x user factors by user id
            self.candidate_als_factors = tf.Variable(block.item_factors, trainable=False, name="candidate_als_factors")
            self.als_user_factors = tf.Variable(block.user_factors, trainable=False, name="als_user_factors")
            self.als_user_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(np.asarray(block.user_ids, dtype=str).astype(object)),
                tf.range(len(block.user_ids), dtype=tf.int64)), -1)
        self.item_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), -1)
        order = np.argsort(-candidates["counts"], kind="stable")
        self.popular_ids = tf.constant(np.asarray(ids)[order])
        self.popular_counts = tf.constant(candidates["counts"][order].astype(np.float32))
        self.item_feature_keys = list(item_feature_keys)
        self.item_strings = {k: tf.constant(candidates["features"][k]) for k in self.item_feature_keys}

    def _served_query(self, inputs: dict, query: tf.Tensor, known: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
        """What the top-k layer is queried with: ``[q, w u, s]`` (no ``w u`` without the ALS block);
        ``s`` the prior's scale of the query's activity bucket, by the history items it resolved to
        (a known user's stored ones, or those sent; none: the cold bucket)."""
        items = tf.minimum(tf.reduce_sum(tf.cast(tf.not_equal(history, ""), tf.int64), axis=1),
                           tf.constant(self.resolver.history_length, tf.int64))  # what the query reads
        bucket = tf.searchsorted(tf.broadcast_to(self.prior_edges[None, :], [tf.shape(items)[0],
                                                                            tf.shape(self.prior_edges)[0]]),
                                 items[:, None], side="right")[:, 0]
        scale = tf.gather(self.prior_scales, bucket)
        if self.blended:
            rows = self.als_user_table.lookup(inputs[names.USER_ID])
            factors = tf.gather(self.als_user_factors, tf.maximum(rows, 0))
            query = tf.concat([query, tf.where((rows >= 0)[:, None], factors, tf.zeros_like(factors))], axis=1)
        return prior.augment_query_tensor(query, scale)

    def _resolve_query(self, inputs: dict) -> dict:
        """Saved as ``resolve_query`` so the index step can wrap this export with ScaNN."""
        query, history, known = self.resolver.resolve(inputs)
        return {names.OUT_EMBEDDING: query, "history": history, names.OUT_KNOWN_USER: known,
                SERVED_QUERY: self._served_query(inputs, query, known, history)}

    def _recommend(self, inputs: dict) -> dict:
        query, history, known = self.resolver.resolve(inputs)
        scores, ids = self.topk(self._served_query(inputs, query, known, history), k=self.fetch_k)
        k = tf.minimum(inputs[names.K], self.max_k)
        top_ids, top_scores = finalize_topk(scores, ids, history, inputs[names.EXCLUDE_HISTORY], k)
        # The history it used (sent or stored): the one-call recommender reads it instead of
        # resolving the query a second time.
        return {names.OUT_ITEM_IDS: top_ids, names.OUT_SCORES: top_scores, names.OUT_KNOWN_USER: known,
                names.OUT_HISTORY_ITEM_IDS: history}

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


def item_strings(items: dict, item_features: dict) -> dict:
    """Item side features as strings per item (the ``item_features`` signature's answers)."""
    out = {}
    for key, kind in item_features.items():
        col = items[key]
        if col.ndim == 2:  # multi-valued
            out[key] = np.array([names.MULTI_VALUE_JOIN.join(v.decode() for v in row if v) for row in col], dtype=object)
        elif kind == F.NUMERIC:
            out[key] = np.array([f"{v:g}" for v in col], dtype=object)
        else:
            out[key] = np.array([v.decode() for v in col], dtype=object)
    return out


def item_model_inputs(data) -> dict:
    """Every catalogue item (``data``: trainer.skeleton.TrainingData) as candidate-tower inputs."""
    lists = [k for k, v in data.item_features.items() if v == F.MULTI_VALUED]
    raw = {k: tf.constant(v) for k, v in data.items.items()}
    return raw_to_model_inputs(raw, data.tft_layer, data.layout, list_keys=lists)


def candidate_ids(data) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in data.items[F.ITEM_ID]], dtype=object)


def candidate_set(data, candidate_tower) -> dict:
    """Every catalogue item through the Transform graph and the candidate tower.

    ``data``: trainer.skeleton.TrainingData. Returns ids (str), embeddings [N, D], the
    unknown-item embedding [D] and the item feature strings; the caller adds ``counts``.
    """
    lists = [k for k, v in data.item_features.items() if v == F.MULTI_VALUED]
    emb = candidate_tower(item_model_inputs(data), training=False)
    unknown = candidate_tower(raw_to_model_inputs(unknown_item_raw(data.items, data.item_features), data.tft_layer,
                                                  data.layout, list_keys=lists), training=False)
    return {"ids": candidate_ids(data), "embeddings": emb.numpy(), "unknown_embedding": unknown.numpy()[0],
            "features": item_strings(data.items, data.item_features)}


def candidate_bias(candidates: dict) -> np.ndarray:
    """Each candidate's prior bias (``candidate_set`` + the evaluation's ``bias``; zeros when absent)."""
    bias = candidates.get("bias")
    return np.zeros(len(candidates["ids"]), np.float32) if bias is None else np.asarray(bias, np.float32)


def served_candidates(embeddings: np.ndarray, bias: np.ndarray, block=None) -> np.ndarray:
    """What the top-k layers index: ``[c, v, bias]`` per candidate (queried with ``[q, w u, 1]``;
    ``block``: the ``als_blend.AlsBlock``, None: ``[c, bias]`` against ``[q, s]``)."""
    return prior.augment_candidates(als_blend.served_candidates(embeddings, block), bias)


def served_vectors(export) -> np.ndarray:
    """``served_candidates`` of a saved brute-force export (loaded): what its top-k layer indexes.
    Exports from before the prior or the ALS block lack those parts (zeros / nothing)."""
    emb = export.candidate_embeddings.numpy()
    bias = export.candidate_bias.numpy() if hasattr(export, "candidate_bias") else np.zeros(len(emb), np.float32)
    if hasattr(export, "candidate_als_factors"):
        emb = np.concatenate([emb, export.candidate_als_factors.numpy()], axis=1)
    return prior.augment_candidates(emb, bias)


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
        served = (resolved[SERVED_QUERY] if SERVED_QUERY in resolved  # exports from before it: [q, 1]
                  else prior.augment_query_tensor(resolved[names.OUT_EMBEDDING]))
        scores, ids = self.topk(served, k=self.fetch_k)
        k = tf.minimum(inputs[names.K], self.max_k)
        top_ids, top_scores = finalize_topk(scores, ids, resolved["history"], inputs[names.EXCLUDE_HISTORY], k)
        return {names.OUT_ITEM_IDS: top_ids, names.OUT_SCORES: top_scores,
                names.OUT_KNOWN_USER: resolved[names.OUT_KNOWN_USER], names.OUT_HISTORY_ITEM_IDS: resolved["history"]}

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
