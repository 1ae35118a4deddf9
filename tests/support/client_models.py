"""Tiny hand-built retrieval and ranking SavedModels with the real signatures (serving/names.py).

Catalogue: 20 items "i00".."i19" in four clusters of five (c = n // 5), 4-dim
embeddings: item (c, j) = (1 - 0.1 j) * u_c + 0.05 j * u_{(c+1) % 4}, so items of a
cluster are nearly parallel and clusters nearly orthogonal.

retrieval:
  query = mean embedding of the history (the stored one for a known user sent
  with an all-"" history), + u_2 when user_country == "fr"; score = dot(query, item).
  Known users: u1 (stored history [i05]), u2 ([i10, i11]). User features:
  user_age float32, user_country string.
  popular: counts 100 - 5 * ((n - 10) mod 20): i10 (100), i11 (95) ... i09 (5).
  item_features: item_title "Item NN", item_genres by cluster (Comedy,
  Drama|Romance, Action|Comedy, Horror), item_release_year 1990 + n.
ranking:
  engagement / rating are per-item tables (ENGAGEMENT, RATING), the user ignored.
  explain: per-item attribution tables over EXPLAIN_GROUPS (ENGAGEMENT_ATTRIBUTIONS,
  RATING_ATTRIBUTIONS), hand-set so each item's top groups are known (not gradients).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from serving import names

N_ITEMS = 20
DIM = 4
ITEMS = [f"i{n:02d}" for n in range(N_ITEMS)]
GENRES = ["Comedy", "Drama" + names.MULTI_VALUE_JOIN + "Romance", "Action" + names.MULTI_VALUE_JOIN + "Comedy", "Horror"]
USER_FEATURES = {"user_age": tf.float32, "user_country": tf.string}
USERS = {"u1": ["i05"], "u2": ["i10", "i11"]}


def _embeddings() -> np.ndarray:
    emb = np.zeros((N_ITEMS, DIM), np.float32)
    for n in range(N_ITEMS):
        c, j = divmod(n, 5)
        emb[n, c] = 1.0 - 0.1 * j
        emb[n, (c + 1) % DIM] = 0.05 * j
    return emb


EMBEDDINGS = _embeddings()
POPULARITY = np.array([100 - 5 * ((n - 10) % N_ITEMS) for n in range(N_ITEMS)], np.float32)

# Engagement: cluster 0 prefers the later items (the reverse of retrieval's order
# for a history [i00]); i19 is the one far item with high engagement; the rest
# 0.10 + 0.01 n.
ENGAGEMENT = np.array([0.10 + 0.01 * n for n in range(N_ITEMS)], np.float32)
ENGAGEMENT[[0, 1, 2, 3, 4]] = [0.5, 0.6, 0.7, 0.8, 0.9]
ENGAGEMENT[19] = 0.65
RATING = np.array([3.0 + 0.01 * n for n in range(N_ITEMS)], np.float32)
RATING[[1, 2, 3, 4, 19]] = [4.2, 4.8, 3.5, 2.0, 1.0]

# The explain signature's groups and per-item attributions (rows: items, then the OOV row of zeros).
# Engagement: item_id ENGAGEMENT - 0.5, history 0.2 + 0.01 n, item_genres -0.25 - 0.1 * cluster,
# user_id 0.05, hour_of_day 0; rating: item_id RATING - 3, item_genres 0.1 * cluster, the rest 0.02.
EXPLAIN_GROUPS = ["user_id", "history", "hour_of_day", "item_id", "item_genres"]
ENGAGEMENT_ATTRIBUTIONS = np.stack([np.full(N_ITEMS, 0.05), 0.2 + 0.01 * np.arange(N_ITEMS), np.zeros(N_ITEMS),
                                    ENGAGEMENT - 0.5, -0.25 - 0.1 * (np.arange(N_ITEMS) // 5)], 1).astype(np.float32)
RATING_ATTRIBUTIONS = np.stack([np.full(N_ITEMS, 0.02), np.full(N_ITEMS, 0.02), np.full(N_ITEMS, 0.02),
                                RATING - 3.0, 0.1 * (np.arange(N_ITEMS) // 5)], 1).astype(np.float32)


def item_features(n: int) -> dict[str, str]:
    return {"item_title": f"Item {n:02d}", "item_genres": GENRES[n // 5], "item_release_year": str(1990 + n)}


def _query_spec() -> dict:
    spec = {
        names.USER_ID: tf.TensorSpec([None], tf.string, names.USER_ID),
        names.HISTORY_ITEM_IDS: tf.TensorSpec([None, None], tf.string, names.HISTORY_ITEM_IDS),
        names.HOUR_OF_DAY: tf.TensorSpec([None], tf.int64, names.HOUR_OF_DAY),
        names.DAY_OF_WEEK: tf.TensorSpec([None], tf.int64, names.DAY_OF_WEEK),
        names.HOURS_SINCE_PREV_EVENT: tf.TensorSpec([None], tf.float32, names.HOURS_SINCE_PREV_EVENT),
    }
    for key, dtype in USER_FEATURES.items():
        spec[key] = tf.TensorSpec([None], dtype, key)
    return spec


def _table(keys) -> tf.lookup.StaticHashTable:
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(keys)), tf.range(len(keys), dtype=tf.int64)), -1)


class _Base(tf.Module):
    def __init__(self):
        super().__init__()
        self.emb = tf.constant(EMBEDDINGS)
        self.ids = tf.constant(ITEMS)
        self.item_table = _table(ITEMS)
        self.user_table = _table(list(USERS))
        width = max(len(h) for h in USERS.values())
        self.user_hist = tf.constant([h + [""] * (width - len(h)) for h in USERS.values()])

    def _item_index(self, ids):
        return self.item_table.lookup(ids)

    def _query(self, inputs):
        uidx = self.user_table.lookup(inputs[names.USER_ID])
        known = uidx >= 0
        given = inputs[names.HISTORY_ITEM_IDS]
        stored = tf.gather(self.user_hist, tf.maximum(uidx, 0))
        width = tf.maximum(tf.shape(given)[1], tf.shape(stored)[1])
        given = tf.pad(given, [[0, 0], [0, width - tf.shape(given)[1]]])
        stored = tf.pad(stored, [[0, 0], [0, width - tf.shape(stored)[1]]])
        use_stored = known & tf.reduce_all(tf.equal(given, ""), axis=1)
        hist = tf.where(use_stored[:, None], stored, given)
        hidx = self._item_index(hist)
        valid = tf.cast(hidx >= 0, tf.float32)
        vecs = tf.gather(self.emb, tf.maximum(hidx, 0)) * valid[..., None]
        query = tf.reduce_sum(vecs, 1) / tf.maximum(tf.reduce_sum(valid, 1), 1.0)[:, None]
        fr = tf.cast(tf.equal(inputs["user_country"], "fr"), tf.float32)
        query += fr[:, None] * tf.constant([[0.0, 0.0, 1.0, 0.0]])
        return query, hist, known


class RetrievalTestModule(_Base):
    def __init__(self):
        super().__init__()
        self.popularity = tf.constant(POPULARITY)
        order = np.argsort(-POPULARITY, kind="stable")
        self.popular_ids = tf.constant(np.array(ITEMS, dtype=object)[order])
        self.popular_counts = tf.constant(POPULARITY[order])
        feats = [item_features(n) for n in range(N_ITEMS)]
        self.feature_keys = sorted(feats[0])
        self.features = {k: tf.constant([f[k] for f in feats]) for k in self.feature_keys}

    def _recommend(self, inputs):
        query, hist, known = self._query(inputs)
        scores = tf.matmul(query, self.emb, transpose_b=True)  # [B, N]
        in_hist = tf.reduce_any(tf.equal(self.ids[None, :, None], hist[:, None, :])
                                & tf.not_equal(hist, "")[:, None, :], -1)
        scores = tf.where(in_hist & inputs[names.EXCLUDE_HISTORY][:, None], -np.inf, scores)
        k = inputs[names.K]
        k_max = tf.minimum(tf.reduce_max(tf.maximum(k, 0)), N_ITEMS)
        top, pos = tf.math.top_k(scores, k=k_max)
        ids = tf.gather(self.ids, pos)
        valid = (tf.range(k_max)[None, :] < k[:, None]) & tf.math.is_finite(top)
        return {names.OUT_ITEM_IDS: tf.where(valid, ids, ""), names.OUT_SCORES: tf.where(valid, top, -np.inf),
                names.OUT_KNOWN_USER: known}

    def _query_embedding(self, inputs):
        return {names.OUT_EMBEDDING: self._query(inputs)[0]}

    def _resolve_query(self, inputs):
        """Saved as ``resolve_query``, as the real export does: the recommender reads the history from it."""
        query, hist, known = self._query(inputs)
        return {names.OUT_EMBEDDING: query, "history": hist, names.OUT_KNOWN_USER: known}

    def attach_resolve_query(self) -> None:
        self.resolve_query = tf.function(self._resolve_query, input_signature=[_query_spec()])

    def _candidate_embedding(self, item_id):
        idx = self._item_index(item_id)
        emb = tf.gather(self.emb, tf.maximum(idx, 0)) * tf.cast(idx >= 0, tf.float32)[:, None]
        return {names.OUT_EMBEDDING: emb}

    def _popular(self, k):
        k_max = tf.minimum(tf.reduce_max(k), N_ITEMS)
        rows = tf.shape(k)[0]
        ids = tf.tile(self.popular_ids[None, :k_max], [rows, 1])
        counts = tf.tile(self.popular_counts[None, :k_max], [rows, 1])
        valid = tf.range(k_max)[None, :] < k[:, None]
        return {names.OUT_ITEM_IDS: tf.where(valid, ids, ""), names.OUT_SCORES: tf.where(valid, counts, -np.inf)}

    def _item_features(self, item_id):
        idx = self._item_index(item_id)
        known = idx >= 0
        out = {names.OUT_KNOWN_ITEM: known}
        for key in self.feature_keys:
            out[key] = tf.where(known, tf.gather(self.features[key], tf.maximum(idx, 0)), "")
        return out

    def signatures(self) -> dict:
        qspec = _query_spec()
        rspec = dict(qspec)
        rspec[names.K] = tf.TensorSpec([None], tf.int32, names.K)
        rspec[names.EXCLUDE_HISTORY] = tf.TensorSpec([None], tf.bool, names.EXCLUDE_HISTORY)
        item_spec = tf.TensorSpec([None], tf.string, names.ITEM_IDS_INPUT)
        recommend = tf.function(lambda **kw: self._recommend(kw)).get_concrete_function(**rspec)
        return {
            names.RECOMMEND_SIGNATURE: recommend,
            names.DEFAULT_SIGNATURE: recommend,
            names.QUERY_EMBEDDING_SIGNATURE: tf.function(lambda **kw: self._query_embedding(kw)).get_concrete_function(**qspec),
            names.CANDIDATE_EMBEDDING_SIGNATURE: tf.function(lambda item_id: self._candidate_embedding(item_id)).get_concrete_function(item_spec),
            names.POPULAR_SIGNATURE: tf.function(lambda k: self._popular(k)).get_concrete_function(
                tf.TensorSpec([None], tf.int32, names.K)),
            names.ITEM_FEATURES_SIGNATURE: tf.function(lambda item_id: self._item_features(item_id)).get_concrete_function(item_spec),
        }


class RankingTestModule(_Base):
    def __init__(self):
        super().__init__()
        self.engagement = tf.constant(np.append(ENGAGEMENT, 0.0).astype(np.float32))
        self.rating = tf.constant(np.append(RATING, 0.0).astype(np.float32))
        zero = np.zeros((1, len(EXPLAIN_GROUPS)), np.float32)
        self.engagement_attr = tf.constant(np.concatenate([ENGAGEMENT_ATTRIBUTIONS, zero]))
        self.rating_attr = tf.constant(np.concatenate([RATING_ATTRIBUTIONS, zero]))

    def _explain(self, inputs):
        out = self._score(inputs)
        idx = self._item_index(inputs[names.CANDIDATE_ITEM_IDS])
        idx = tf.where(idx >= 0, idx, N_ITEMS)
        rows = tf.shape(idx)[0]
        out[names.OUT_ENGAGEMENT_ATTRIBUTIONS] = tf.gather(self.engagement_attr, idx)
        out[names.OUT_RATING_ATTRIBUTIONS] = tf.gather(self.rating_attr, idx)
        out[names.OUT_FEATURE_GROUPS] = tf.tile(tf.constant(EXPLAIN_GROUPS)[None, :], [rows, 1])
        return out

    def _score(self, inputs):
        self._query(inputs)  # validates the query inputs like the real model; result unused
        cands = inputs[names.CANDIDATE_ITEM_IDS]
        idx = self._item_index(cands)
        idx = tf.where(idx >= 0, idx, N_ITEMS)
        return {names.OUT_RATING: tf.gather(self.rating, idx), names.OUT_ENGAGEMENT: tf.gather(self.engagement, idx)}

    def signatures(self) -> dict:
        spec = _query_spec()
        spec[names.CANDIDATE_ITEM_IDS] = tf.TensorSpec([None, None], tf.string, names.CANDIDATE_ITEM_IDS)
        score = tf.function(lambda **kw: self._score(kw)).get_concrete_function(**spec)
        explain = tf.function(lambda **kw: self._explain(kw)).get_concrete_function(**spec)
        return {names.SCORE_SIGNATURE: score, names.DEFAULT_SIGNATURE: score, names.EXPLAIN_SIGNATURE: explain}


def save_models(root: str, recommender: bool = False) -> str:
    """Exports both models under root/<model>/1 and writes root/models.config; returns its path.

    recommender: also the one-call model over the two (names.RECOMMENDER_OF of the
    retrieval model: "recommender"), built by trainer/recommender/export.py as the pipeline does.
    """
    retrieval = RetrievalTestModule()
    retrieval.attach_resolve_query()
    models = [(names.RETRIEVAL_MODEL, retrieval), (names.RANKING_MODEL, RankingTestModule())]
    entries = []
    for model, module in models:
        base = os.path.join(root, model)
        tf.saved_model.save(module, os.path.join(base, "1"), signatures=module.signatures())
        entries.append(f'  config {{ name: "{model}" base_path: "{base}" model_platform: "tensorflow" }}')
    if recommender:
        from trainer.recommender.export import build

        model = names.RECOMMENDER_OF[names.RETRIEVAL_MODEL]
        base = os.path.join(root, model)
        build(os.path.join(root, names.RETRIEVAL_MODEL, "1"), os.path.join(root, names.RANKING_MODEL, "1"),
              os.path.join(base, "1"), model, num_candidates=100, scann=False)
        entries.append(f'  config {{ name: "{model}" base_path: "{base}" model_platform: "tensorflow" }}')
    path = os.path.join(root, "models.config")
    with open(path, "w") as f:
        f.write("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    return path
