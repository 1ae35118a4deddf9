"""The one-call ``recommender`` export: retrieve -> exclude and filter -> rank -> top k, in one Predict.

It composes two exported SavedModels, unchanged, the way an ensemble does in Triton
or Merlin, but as one SavedModel that a TF-Serving-compatible server runs in one call:

- ``recommender``: over the ScaNN ``retrieval`` export (needs the Scann ops, as that does);
- ``recommender_brute_force``: over ``retrieval_brute_force``: stock ops only, so stock
  TensorFlow Serving serves it.

Both wrap the same ``ranking`` export. The parts are called through their own
signatures (``recommend``, ``popular``, ``item_features``, ``candidate_embedding``,
``score``), so the composed model answers exactly what the two-stage client gets from
the separate models, without 3-5 round trips. Signature ``recommend`` (also
``serving_default``); every input batch-major and required, names in serving/names.py:

  inputs   the retrieval query inputs (user id, history, context, user side features)
           k int32 [B], exclude_history bool [B], num_candidates int32 [B] (0: default),
           exclude_item_ids string [B, E], rank_by string [B], diversity float32 [B],
           filter_<item feature> string [B, V] per item side feature ("" = no filter)
  outputs  item_ids, scores (final), retrieval_scores, rating, engagement, one item_<name>
           string per item side feature: [B, max(k)]; reasons [B, max(k)];
           similar_item_ids / similar_scores [B, max(k), 2]; history_item_ids [B, H];
           known_user [B]; source [B]

Per row: retrieval proposes ``num_candidates`` items (an unknown user with no history
gets the most popular items instead); the history (when exclude_history) and
exclude_item_ids are dropped; each filter keeps items whose feature (split on
names.MULTI_VALUE_JOIN, trimmed, case-insensitive) holds one of its values, all filters
together; ranking scores the rest and ``rank_by`` orders them (blend: the mean of
engagement and the rating min-max normalized over the row's candidates); with
diversity > 0, a maximal-marginal-relevance re-rank on the cosine of the candidate
embeddings picks the k; each item's reason names the (at most two) items of the history
the model used closest to it, by the same cosine.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from serving import names

DEFAULT_NUM_CANDIDATES = 100
REASON_ITEMS = 2  # history items named per reason
_MISSING_TOKEN = "\x00"  # pads split feature tokens; a filter value is never this


def _pad_columns(x: tf.Tensor, width: tf.Tensor, value) -> tf.Tensor:
    """[B, W] -> [B, width] (cut or padded with value)."""
    x = x[:, :width]
    return tf.pad(x, [[0, 0], [0, width - tf.shape(x)[1]]], constant_values=value)


def _unit(x: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(x, tf.norm(x, axis=-1, keepdims=True))


def _min_max(x: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Per-row min-max normalization over the valid entries (1 where a row is constant; 0 invalid)."""
    lo = tf.reduce_min(tf.where(valid, x, np.inf), axis=1, keepdims=True)
    hi = tf.reduce_max(tf.where(valid, x, -np.inf), axis=1, keepdims=True)
    norm = tf.where(hi > lo, tf.math.divide_no_nan(x - lo, hi - lo), tf.ones_like(x))
    return tf.where(valid, norm, tf.zeros_like(x))


def _in_rows(ids: tf.Tensor, sets: tf.Tensor) -> tf.Tensor:
    """[B, W] ids, [B, E] per-row sets ("" padding) -> [B, W] bool: the id is in its row's set."""
    return tf.reduce_any(tf.equal(ids[:, :, None], sets[:, None, :]) & tf.not_equal(sets, "")[:, None, :], -1)


def _matches(feature: tf.Tensor, wanted: tf.Tensor) -> tf.Tensor:
    """[B, W] feature strings, [B, V] wanted values -> [B, W] bool; rows without values match all."""
    shape = tf.shape(feature)
    tokens = tf.strings.split(tf.reshape(feature, [-1]), names.MULTI_VALUE_JOIN).to_tensor(_MISSING_TOKEN)
    tokens = tf.reshape(tf.strings.lower(tf.strings.strip(tokens)), [shape[0], shape[1], -1])  # [B, W, T]
    wanted = tf.strings.lower(tf.strings.strip(wanted))
    active = tf.not_equal(wanted, "")  # [B, V]
    hit = tf.equal(tokens[:, :, :, None], wanted[:, None, None, :]) & active[:, None, None, :]
    return tf.reduce_any(hit, axis=[2, 3]) | ~tf.reduce_any(active, axis=1)[:, None]


def _top_positions(final: tf.Tensor, k_max: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Plain order: positions [B, k_max] of the best final scores, and which are real."""
    top, pos = tf.math.top_k(final, k=k_max)
    return pos, tf.math.is_finite(top)


def _mmr_positions(final: tf.Tensor, valid: tf.Tensor, emb: tf.Tensor, diversity: tf.Tensor,
                   k_max: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Maximal marginal relevance, greedy: argmax of lam * rel - (1 - lam) * (max cosine to the picked).

    rel is the final score min-max normalized over the row's candidates; lam = 1 - diversity.
    """
    rel = _min_max(final, valid)
    unit = _unit(emb)
    sim = tf.einsum("bwd,bvd->bwv", unit, unit)  # [B, W, W]
    lam = (1.0 - diversity)[:, None]
    width = tf.shape(final)[1]
    picks = tf.TensorArray(tf.int32, size=k_max)
    real = tf.TensorArray(tf.bool, size=k_max)
    available = valid
    max_sim = tf.fill(tf.shape(final), -np.inf)  # nothing picked yet: no penalty
    for i in tf.range(k_max):
        penalty = tf.where(tf.math.is_finite(max_sim), max_sim, 0.0)
        objective = tf.where(available, lam * rel - (1.0 - lam) * penalty, -np.inf)
        best = tf.argmax(objective, axis=1, output_type=tf.int32)
        picks = picks.write(i, best)
        real = real.write(i, tf.reduce_any(available, axis=1))
        available = available & ~tf.one_hot(best, width, on_value=True, off_value=False)
        max_sim = tf.maximum(max_sim, tf.gather(sim, best, axis=2, batch_dims=1))
    return tf.transpose(picks.stack()), tf.transpose(real.stack())


def _labels(ids: tf.Tensor, titles: tf.Tensor | None) -> tf.Tensor:
    """Item ids as people read them: 'id "title"' where a title is known."""
    if titles is None:
        return ids
    return tf.where(tf.equal(titles, ""), ids, tf.strings.join([ids, ' "', titles, '"']))


class RecommenderModule(tf.Module):
    """Retrieval + ranking exports (loaded SavedModels) composed into one ``recommend``."""

    def __init__(self, retrieval, ranking, num_candidates: int = DEFAULT_NUM_CANDIDATES):
        super().__init__()
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        self.retrieval, self.ranking = retrieval, ranking
        self.default_num_candidates = int(num_candidates)
        sigs, rsigs = retrieval.signatures, ranking.signatures
        needed = (names.RECOMMEND_SIGNATURE, names.POPULAR_SIGNATURE, names.ITEM_FEATURES_SIGNATURE,
                  names.CANDIDATE_EMBEDDING_SIGNATURE)
        missing = [s for s in needed if s not in sigs] + (
            [] if names.SCORE_SIGNATURE in rsigs else [f"ranking/{names.SCORE_SIGNATURE}"])
        if missing:
            raise ValueError(f"cannot compose a recommender: the exports lack signature(s) {missing}")
        self._retrieve, self._popular = sigs[names.RECOMMEND_SIGNATURE], sigs[names.POPULAR_SIGNATURE]
        self._item_features, self._embed = sigs[names.ITEM_FEATURES_SIGNATURE], sigs[names.CANDIDATE_EMBEDDING_SIGNATURE]
        self._score = rsigs[names.SCORE_SIGNATURE]
        # The retrieval export's own query resolution (the ScaNN export keeps it on its base):
        # the history it used, so a user who sends only an id gets reasons from their own history.
        # Exports since recommend returned it give it with the candidates (one resolution per request).
        history_out = names.OUT_HISTORY_ITEM_IDS in self._retrieve.structured_outputs
        owner = retrieval if hasattr(retrieval, "resolve_query") else getattr(retrieval, "base", None)
        self._resolve = None if history_out else getattr(owner, "resolve_query", None)
        retrieve_spec = self._retrieve.structured_input_signature[1]
        self.retrieval_keys = sorted(k for k in retrieve_spec if k not in (names.K, names.EXCLUDE_HISTORY))
        score_spec = self._score.structured_input_signature[1]
        self.ranking_keys = sorted(k for k in score_spec if k != names.CANDIDATE_ITEM_IDS)
        self.query_spec = {k: retrieve_spec[k] for k in self.retrieval_keys}
        for key in self.ranking_keys:
            self.query_spec.setdefault(key, score_spec[key])
        self.feature_keys = sorted(k for k in self._item_features.structured_outputs if k != names.OUT_KNOWN_ITEM)
        title = "item_title"
        self.title_key = title if title in self.feature_keys else None

    def input_signature(self) -> dict:
        spec = {k: tf.TensorSpec(v.shape, v.dtype, k) for k, v in self.query_spec.items()}
        spec[names.K] = tf.TensorSpec([None], tf.int32, names.K)
        spec[names.EXCLUDE_HISTORY] = tf.TensorSpec([None], tf.bool, names.EXCLUDE_HISTORY)
        spec[names.NUM_CANDIDATES] = tf.TensorSpec([None], tf.int32, names.NUM_CANDIDATES)
        spec[names.EXCLUDE_ITEM_IDS] = tf.TensorSpec([None, None], tf.string, names.EXCLUDE_ITEM_IDS)
        spec[names.RANK_BY] = tf.TensorSpec([None], tf.string, names.RANK_BY)
        spec[names.DIVERSITY] = tf.TensorSpec([None], tf.float32, names.DIVERSITY)
        for key in self.feature_keys:
            spec[names.filter_input(key)] = tf.TensorSpec([None, None], tf.string, names.filter_input(key))
        return spec

    # -- stages -------------------------------------------------------------------

    def _candidates(self, inputs: dict, n: tf.Tensor):
        """Stage 1: (ids, scores [B, W], known_user [B], popular fallback rows [B], the history
        retrieval used [B, H] or None when the export does not return it)."""
        got = self._retrieve(**{k: inputs[k] for k in self.retrieval_keys}, k=n,
                             exclude_history=inputs[names.EXCLUDE_HISTORY])
        ids, scores, known = got[names.OUT_ITEM_IDS], got[names.OUT_SCORES], got[names.OUT_KNOWN_USER]
        fallback = ~known & tf.reduce_all(tf.equal(inputs[names.HISTORY_ITEM_IDS], ""), axis=1)

        def with_popular():  # only when some row is an unknown user without history
            pop = self._popular(k=n)
            width = tf.maximum(tf.shape(ids)[1], tf.shape(pop[names.OUT_ITEM_IDS])[1])
            return (tf.where(fallback[:, None], _pad_columns(pop[names.OUT_ITEM_IDS], width, ""),
                             _pad_columns(ids, width, "")),
                    tf.where(fallback[:, None], _pad_columns(pop[names.OUT_SCORES], width, -np.inf),
                             _pad_columns(scores, width, -np.inf)))

        ids, scores = tf.cond(tf.reduce_any(fallback), with_popular, lambda: (ids, scores))
        return ids, scores, known, fallback, got.get(names.OUT_HISTORY_ITEM_IDS)

    def _features(self, ids: tf.Tensor) -> dict:
        """Item side features as strings, [B, W] each."""
        out = self._item_features(item_id=tf.reshape(ids, [-1]))
        return {k: tf.reshape(out[k], tf.shape(ids)) for k in self.feature_keys}

    def _embeddings(self, ids: tf.Tensor) -> tf.Tensor:
        """[B, W] ids -> [B, W, D] candidate embeddings."""
        emb = self._embed(item_id=tf.reshape(ids, [-1]))[names.OUT_EMBEDDING]
        return tf.reshape(emb, tf.concat([tf.shape(ids), tf.shape(emb)[-1:]], 0))

    def _final(self, rating, engagement, rank_by, valid):
        check = tf.debugging.assert_equal(
            tf.reduce_all(tf.reduce_any(tf.equal(rank_by[:, None], tf.constant(("",) + names.RANK_BY_VALUES)), 1)),
            True, message=f"rank_by must be one of {names.RANK_BY_VALUES} (or \"\" for engagement)")
        with tf.control_dependencies([check]):
            blend = 0.5 * engagement + 0.5 * _min_max(rating, valid)
        final = tf.where(tf.equal(rank_by, "rating")[:, None], rating,
                         tf.where(tf.equal(rank_by, "blend")[:, None], blend, engagement))
        return tf.where(valid, final, -np.inf)

    def _reasons(self, top_ids, top_emb, top_real, history, fallback):
        """Per item: the closest (cosine > 0) distinct history items, and a sentence naming them."""
        hist_emb = _unit(self._embeddings(history))  # [B, H, D]
        h = tf.shape(history)[1]
        earlier = tf.linalg.band_part(tf.ones([h, h], tf.bool), -1, 0) & ~tf.eye(h, dtype=tf.bool)  # [j, i]: i < j
        dup = tf.reduce_any(tf.equal(history[:, :, None], history[:, None, :]) & earlier[None], axis=2)
        usable = tf.not_equal(history, "") & ~dup  # [B, H]
        cos = tf.einsum("bkd,bhd->bkh", _unit(top_emb), hist_emb)
        ok = usable[:, None, :] & tf.not_equal(top_ids[:, :, None], history[:, None, :]) & (cos > 0)
        cos = tf.where(ok, cos, -np.inf)
        r = tf.minimum(REASON_ITEMS, h)
        vals, pos = tf.math.top_k(cos, k=r)  # [B, K, r]
        sim_ids = tf.where(tf.math.is_finite(vals), tf.gather(history, pos, batch_dims=1), "")
        sim_ids, vals = _pad_columns3(sim_ids, ""), _pad_columns3(vals, -np.inf)
        titles = None
        if self.title_key is not None:
            titles = tf.reshape(self._features(tf.reshape(sim_ids, [tf.shape(sim_ids)[0], -1]))[self.title_key],
                                tf.shape(sim_ids))
        parts = tf.strings.join([_labels(sim_ids, titles), " (", tf.strings.as_string(
            tf.where(tf.math.is_finite(vals), vals, 0.0), precision=2), ")"])
        first, second = parts[:, :, 0], parts[:, :, 1]
        has1, has2 = tf.not_equal(sim_ids[:, :, 0], ""), tf.not_equal(sim_ids[:, :, 1], "")
        text = tf.strings.join(["similar to ", first, tf.where(has2, tf.strings.join([" and ", second]), "")])
        text = tf.where(has1, text, names.REASON_PROFILE)
        text = tf.where(fallback[:, None], names.REASON_POPULAR, text)
        return tf.where(top_real, text, ""), sim_ids, vals

    # -- the signature -------------------------------------------------------------

    def _recommend(self, inputs: dict) -> dict:
        k = tf.maximum(inputs[names.K], 0)
        n = tf.where(inputs[names.NUM_CANDIDATES] > 0, inputs[names.NUM_CANDIDATES], self.default_num_candidates)
        n = tf.maximum(n, k)
        ids, retrieval_scores, known, fallback, history = self._candidates(inputs, n)
        if history is None:  # an export whose recommend does not return it
            history = (self._resolve({key: inputs[key] for key in self.retrieval_keys})["history"]
                       if self._resolve is not None else inputs[names.HISTORY_ITEM_IDS])
        valid = tf.not_equal(ids, "") & tf.math.is_finite(retrieval_scores) & ~_in_rows(ids, inputs[names.EXCLUDE_ITEM_IDS])
        # Retrieval already dropped the history it used; this drops it from the popular fallback too.
        valid &= ~(_in_rows(ids, history) & inputs[names.EXCLUDE_HISTORY][:, None])
        feats = self._features(ids)
        filters = [(feats[key], inputs[names.filter_input(key)]) for key in self.feature_keys]
        if filters:  # string splitting only when some row sends a filter value
            active = tf.reduce_any([tf.reduce_any(tf.not_equal(w, "")) for _, w in filters])

            def filtered():
                keep = valid
                for feature, wanted in filters:
                    keep &= _matches(feature, wanted)
                return keep

            valid = tf.cond(active, filtered, lambda: valid)
        candidates = tf.where(valid, ids, "")
        scored = self._score(**{key: inputs[key] for key in self.ranking_keys}, candidate_item_ids=candidates)
        rating, engagement = scored[names.OUT_RATING], scored[names.OUT_ENGAGEMENT]
        final = self._final(rating, engagement, inputs[names.RANK_BY], valid)

        k_max = tf.minimum(tf.reduce_max(k), tf.shape(ids)[1])
        diversity = tf.clip_by_value(inputs[names.DIVERSITY], 0.0, 1.0)
        emb = self._embeddings(candidates)
        pos, real = tf.cond(tf.reduce_any(diversity > 0),
                            lambda: _mmr_positions(final, valid, emb, diversity, k_max),
                            lambda: _top_positions(final, k_max))
        real &= tf.range(k_max)[None, :] < k[:, None]

        def take(x, empty):
            return tf.where(real, tf.gather(x, pos, batch_dims=1), empty)

        top_ids = take(ids, "")
        reasons, sim_ids, sim_scores = self._reasons(top_ids, tf.gather(emb, pos, batch_dims=1), real, history, fallback)
        out = {
            names.OUT_ITEM_IDS: top_ids,
            names.OUT_SCORES: take(final, -np.inf),
            names.OUT_RETRIEVAL_SCORES: take(retrieval_scores, -np.inf),
            names.OUT_RATING: take(rating, -np.inf),
            names.OUT_ENGAGEMENT: take(engagement, -np.inf),
            names.OUT_REASONS: reasons,
            names.OUT_SIMILAR_ITEM_IDS: sim_ids,
            names.OUT_SIMILAR_SCORES: sim_scores,
            names.OUT_HISTORY_ITEM_IDS: history,
            names.OUT_KNOWN_USER: known,
            names.OUT_SOURCE: tf.where(fallback, names.SOURCE_POPULAR, names.SOURCE_RETRIEVAL),
        }
        for key in self.feature_keys:
            out[key] = take(feats[key], "")
        return out

    def signatures(self) -> dict:
        recommend = tf.function(lambda **kw: self._recommend(kw)).get_concrete_function(**self.input_signature())
        return {names.RECOMMEND_SIGNATURE: recommend, names.DEFAULT_SIGNATURE: recommend}


def _pad_columns3(x: tf.Tensor, value) -> tf.Tensor:
    """[B, K, r] -> [B, K, REASON_ITEMS] (a history shorter than REASON_ITEMS pads)."""
    return tf.pad(x, [[0, 0], [0, 0], [0, REASON_ITEMS - tf.shape(x)[2]]], constant_values=value)


def neutral_inputs(rows: int, feature_keys) -> dict:
    """The recommender-only inputs at their neutral values (names.neutral_value): what warmup and tests send."""
    n = names.neutral_value
    out = {
        names.NUM_CANDIDATES: np.full(rows, n(names.NUM_CANDIDATES), np.int32),
        names.EXCLUDE_ITEM_IDS: np.full((rows, 1), n(names.EXCLUDE_ITEM_IDS).encode(), dtype=object),
        names.RANK_BY: np.full(rows, n(names.RANK_BY).encode(), dtype=object),
        names.DIVERSITY: np.full(rows, n(names.DIVERSITY), np.float32),
    }
    for key in feature_keys:
        out[names.filter_input(key)] = np.full((rows, 1), n(names.filter_input(key)).encode(), dtype=object)
    return out


def _warmup_requests(retrieval_dir: str, model_name: str, feature_keys) -> list:
    """The retrieval export's recommend warmup requests, as requests to the recommender."""
    from tensorflow_serving.apis import predict_pb2

    from serving.model_server.warmup_file import read_warmup_requests

    out = []
    for old in read_warmup_requests(retrieval_dir):
        if old.model_spec.signature_name != names.RECOMMEND_SIGNATURE:
            continue
        req = predict_pb2.PredictRequest()
        req.CopyFrom(old)
        req.model_spec.name = model_name
        rows = int(tf.make_ndarray(old.inputs[names.K]).shape[0])
        for key, value in neutral_inputs(rows, feature_keys).items():
            req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        out.append(req)
    return out


def build(retrieval_dir: str, ranking_dir: str, out_dir: str, model_name: str,
          num_candidates: int = DEFAULT_NUM_CANDIDATES, scann: bool | None = None) -> None:
    """Writes the recommender SavedModel composing two exports, with its warmup requests.

    ScaNN's ops are loaded when the retrieval export needs them (scann; by default
    for ``recommender``); the brute-force composition (``recommender_brute_force``)
    stays stock ops.
    """
    from serving.model_server.warmup_file import write_warmup_requests

    scann = model_name == names.RECOMMENDER_MODEL if scann is None else scann
    if scann:
        import scann as _scann  # noqa: F401  registers the Scann ops the ScaNN export holds
    module = RecommenderModule(tf.saved_model.load(retrieval_dir), tf.saved_model.load(ranking_dir), num_candidates)
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]) if scann else None
    tf.saved_model.save(module, out_dir, signatures=module.signatures(), options=options)
    requests = _warmup_requests(retrieval_dir, model_name, module.feature_keys)
    if requests:
        write_warmup_requests(out_dir, requests)
    print(f"[recommender] {model_name}: {os.path.basename(retrieval_dir.rstrip('/'))} + ranking -> {out_dir} "
          f"({len(requests)} warmup requests)", flush=True)
