"""The exported ``ranking`` SavedModel: raw query features + candidate ids in, scores out.

Signature ``score`` (also ``serving_default``), names from serving/names.py:
  inputs   query.query_input_signature(user_features)   user id, history, context,
                                                          user side features ([B] / [B, H])
           candidate_item_ids  string [B, C]
  outputs  rating      float32 [B, C]   predicted rating
           engagement  float32 [B, C]   probability of engagement (sigmoid of the logit)

Signature ``explain``: the same inputs as ``score``; outputs
           rating, engagement         float32 [B, C]     as ``score``
           engagement_attributions    float32 [B, C, G]  gradient x input of the engagement logit
           rating_attributions        float32 [B, C, G]  gradient x input of the predicted rating
           feature_groups             string  [B, G]     the G group names (the same in every row)
  per (query, candidate) pair and feature group (``RankingModel.explain_encoded``: what exactly is
  attributed, and what it sums to). Computed with tf.GradientTape inside the signature's graph
  (stock ops only); only a caller that asks for explanations pays for it.

The query is resolved by ``trainer/query.py QueryResolver.resolve_inputs`` (the same fallback to
the user's stored history/features as the retrieval export), then repeated C times.
Neither side is encoded per (query, candidate) pair: every catalogue item went through the
Transform graph and the model's item encoder at export time into one table (a row per item,
plus a last out-of-vocabulary row built from empty features, used for unknown candidate ids),
and each query row goes through the query encoder once; a request gathers item rows by id,
repeats its encoded query C times and runs only the cross and deep layers and the heads on
the B x C pairs (``RankingModel.score_encoded``). The Transform graph (for the query) and the
model travel inside the SavedModel.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from serving import names
from trainer import features as F
from trainer import query as query_lib
from trainer.model_inputs import FeatureLayout
from trainer.ranking.model import ENGAGEMENT_LOGIT, RATING



def item_input_names(layout: FeatureLayout) -> list[str]:
    """Model inputs that describe the candidate item."""
    return [F.ITEM_ID_IDX, *layout.item_cats, *layout.item_lists,
            *[k + s for k in layout.item_nums for s in (F.Z_SUFFIX, F.BUCKET_SUFFIX)]]


def build_item_rows(items: dict, tft_layer, layout: FeatureLayout, item_features: dict) -> dict[str, np.ndarray]:
    """Model inputs of every catalogue item, then the OOV row: name -> [N + 1] or [N + 1, M] arrays."""
    list_keys = [k for k, v in item_features.items() if v == F.MULTI_VALUED]
    wanted = item_input_names(layout)
    known = query_lib.raw_to_model_inputs({k: tf.constant(v) for k, v in items.items()}, tft_layer, layout, list_keys)
    oov = query_lib.raw_to_model_inputs(query_lib.unknown_item_raw(items, item_features), tft_layer, layout, list_keys)
    rows = {}
    for name in wanted:
        a, b = known[name].numpy(), oov[name].numpy()
        if a.ndim == 2:
            width = max(a.shape[1], b.shape[1], 1)
            a = np.pad(a, [(0, 0), (0, width - a.shape[1])])
            b = np.pad(b, [(0, 0), (0, width - b.shape[1])])
        rows[name] = np.concatenate([a, b])
    return rows


class RankingModule(tf.Module):
    def __init__(self, resolver: query_lib.QueryResolver, model: tf.keras.Model, item_ids: np.ndarray,
                 item_rows: dict[str, np.ndarray], user_features: dict, raw_spec: dict | None = None):
        super().__init__()
        self.resolver, self.model = resolver, model
        # Features (no labels) that evaluate_examples parses from serialized raw tf.Examples.
        self.raw_spec = {k: v for k, v in (raw_spec or {}).items() if k not in (*F.LABEL_KEYS, F.TIMESTAMP)}
        self.user_features = dict(user_features)
        ids = np.asarray([i if isinstance(i, bytes) else str(i).encode() for i in item_ids], dtype=object)
        self.item_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), -1)
        self.oov_row = tf.constant(len(ids), tf.int64)
        # The item encoder's output for every catalogue item (+ the OOV row): [N + 1, Di].
        encoded = model.item_encoder({k: tf.constant(v) for k, v in item_rows.items()})
        self.item_encoded = tf.Variable(encoded, trainable=False, name="item_encoded")

    def _score(self, inputs: dict) -> dict:
        query, item, b, c = self._encode_pairs(inputs)
        out = self.model.score_encoded(query, item, training=False)
        return {names.OUT_RATING: tf.reshape(tf.cast(out[RATING], tf.float32), [b, c]),
                names.OUT_ENGAGEMENT: tf.reshape(tf.sigmoid(tf.cast(out[ENGAGEMENT_LOGIT], tf.float32)), [b, c])}

    def _encode_pairs(self, inputs: dict):
        """(encoded query [B*C, Dq] repeated per candidate, encoded items [B*C, Di], B, C)."""
        cands = inputs[names.CANDIDATE_ITEM_IDS]
        query_keys = query_lib.query_input_signature(self.user_features).keys()
        query, _, _ = self.resolver.resolve_inputs({k: inputs[k] for k in query_keys})
        b, c = tf.shape(cands)[0], tf.shape(cands)[1]
        idx = self.item_table.lookup(tf.reshape(cands, [-1]))
        idx = tf.where(idx >= 0, idx, self.oov_row)
        encoded = tf.repeat(self.model.query_encoder(query, training=False), c, axis=0)
        return encoded, tf.gather(self.item_encoded, idx), b, c

    def _explain(self, inputs: dict) -> dict:
        query, item, b, c = self._encode_pairs(inputs)
        out = self.model.explain_encoded(query, item)
        groups = self.model.feature_group_names()
        g = len(groups)
        scores = out["scores"]
        return {names.OUT_RATING: tf.reshape(tf.cast(scores[RATING], tf.float32), [b, c]),
                names.OUT_ENGAGEMENT: tf.reshape(tf.sigmoid(tf.cast(scores[ENGAGEMENT_LOGIT], tf.float32)), [b, c]),
                names.OUT_ENGAGEMENT_ATTRIBUTIONS: tf.reshape(out[ENGAGEMENT_LOGIT], [b, c, g]),
                names.OUT_RATING_ATTRIBUTIONS: tf.reshape(out[RATING], [b, c, g]),
                # Batch-major (one copy per row), so server-side batching can split it like the rest.
                names.OUT_FEATURE_GROUPS: tf.tile(tf.constant(groups)[None, :], [b, 1])}

    def _group_scaled_logits(self, inputs: dict, group_scale: tf.Tensor) -> tf.Tensor:
        """The engagement logit [B, C] with feature group g's encoded columns multiplied by
        ``group_scale[g]`` (ones: ``score``'s logit). Not a signature: what the tests
        differentiate numerically to check ``explain`` (its attribution of group g is the
        derivative of this logit with respect to ``group_scale[g]`` at ones)."""
        query, item, b, c = self._encode_pairs(inputs)
        scale = tf.linalg.matvec(self.model.group_membership(), group_scale)  # [Dq + Di]
        dq = int(query.shape[-1])
        x0 = tf.concat([tf.cast(query, tf.float32), tf.cast(item, tf.float32)], axis=-1) * scale
        out = self.model.score_encoded(x0[:, :dq], x0[:, dq:], training=False)
        return tf.reshape(tf.cast(out[ENGAGEMENT_LOGIT], tf.float32), [b, c])

    def _evaluate_examples(self, serialized: tf.Tensor) -> dict:
        """One score per example (its own user, item, history, context): what TFMA evaluates."""
        from trainer.model_inputs import to_model_inputs

        raw = tf.io.parse_example(serialized, self.raw_spec)
        feats = to_model_inputs(self.resolver.tft_layer(raw), self.resolver.layout)
        out = self.model(feats, training=False)
        return {names.OUT_RATING: tf.reshape(tf.cast(out[RATING], tf.float32), [-1]),
                names.OUT_ENGAGEMENT: tf.reshape(tf.sigmoid(tf.cast(out[ENGAGEMENT_LOGIT], tf.float32)), [-1])}

    def signatures(self) -> dict:
        spec = dict(query_lib.query_input_signature(self.user_features))
        spec[names.CANDIDATE_ITEM_IDS] = tf.TensorSpec([None, None], tf.string, names.CANDIDATE_ITEM_IDS)
        score = tf.function(lambda **kw: self._score(kw)).get_concrete_function(**spec)
        out = {names.SCORE_SIGNATURE: score, names.DEFAULT_SIGNATURE: score,
               names.EXPLAIN_SIGNATURE: tf.function(lambda **kw: self._explain(kw)).get_concrete_function(**spec)}
        if self.raw_spec:
            out[names.EVAL_SIGNATURE] = tf.function(lambda examples: self._evaluate_examples(examples)).get_concrete_function(
                tf.TensorSpec([None], tf.string, names.EXAMPLES_INPUT))
        return out


def save(module: RankingModule, export_dir: str) -> None:
    spec = dict(query_lib.query_input_signature(module.user_features))
    spec[names.CANDIDATE_ITEM_IDS] = tf.TensorSpec([None, None], tf.string, names.CANDIDATE_ITEM_IDS)
    groups = len(module.model.feature_group_names())
    module.group_scaled_logits = tf.function(
        lambda inputs, group_scale: module._group_scaled_logits(inputs, group_scale),
        input_signature=[spec, tf.TensorSpec([groups], tf.float32, "group_scale")])
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
