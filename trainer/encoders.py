"""Feature encoders shared by the retrieval towers and the ranking model.

All index inputs are shifted so that 0 is padding (trainer/model_inputs.py).
The item-id embedding table is shared by the history encoder and the candidate
tower, so "what the user watched" and "what we recommend" live in one space.
"""

from __future__ import annotations

import tensorflow as tf

from trainer import features as F
from trainer.model_inputs import FeatureLayout


class MaskedMean(tf.keras.layers.Layer):
    """Mean of [B, M, D] embeddings over positions whose index ([B, M]) is non-zero."""

    def call(self, embeddings, ids):
        mask = tf.cast(tf.not_equal(ids, 0), embeddings.dtype)[..., None]
        return tf.reduce_sum(embeddings * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


class HistoryEncoder(tf.keras.layers.Layer):
    """Encodes a [B, H] history of item indices (oldest first, 0 = padding) to [B, D].

    ``mean``: masked mean of item embeddings (order-free, robust on small data).
    ``gru``: a GRU over the sequence; the last valid state.
    ``attention``: one Transformer block (self-attention + FFN) with learned
    positions, masked-mean pooled.
    ``sasrec``: SASRec-style (Kang & McAuley, 2018): ``blocks`` causal pre-LN
    Transformer blocks over item + position embeddings; the output at the latest
    item is the encoding (see ``CausalSequence``).

    ``call_sequence`` encodes every prefix of a left-padded sequence at once ([B, L] ->
    [B, L, D]: position t sees items 0..t), what the sequence objective trains on
    (trainer/retrieval/sequence.py); ``call`` is its value at the latest item. The
    order-free ``attention`` encoder has no prefix form.
    """

    SEQUENCE_KINDS = ("mean", "gru", "sasrec")

    def __init__(self, kind: str, item_embedding: tf.keras.layers.Embedding, dim: int, max_len: int,
                 heads: int = 2, dropout: float = 0.1, blocks: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.kind, self.item_embedding, self.dim = kind, item_embedding, dim
        self.pool = MaskedMean()
        if kind == "sasrec":
            self.sequence = CausalSequence(item_embedding.output_dim, max_len, heads, blocks, dropout)
        elif kind == "gru":
            # Every step's output: ``call`` takes the latest valid one, ``call_sequence`` all of them.
            self.gru = tf.keras.layers.GRU(dim, return_sequences=True)
        elif kind == "attention":
            self.positions = tf.keras.layers.Embedding(max_len + 1, item_embedding.output_dim)
            self.attention = tf.keras.layers.MultiHeadAttention(heads, key_dim=max(8, item_embedding.output_dim // heads),
                                                                dropout=dropout)
            self.norm1 = tf.keras.layers.LayerNormalization()
            self.norm2 = tf.keras.layers.LayerNormalization()
            self.ffn = tf.keras.Sequential([tf.keras.layers.Dense(2 * item_embedding.output_dim, activation="gelu"),
                                            tf.keras.layers.Dense(item_embedding.output_dim)])
        elif kind != "mean":
            raise ValueError(f"unknown history encoder {kind!r}: use mean, gru, attention or sasrec")

    def call(self, ids, training=False):
        # A batch in which every history is empty (new users; a log without timestamps)
        # arrives as [B, 0]; the GRU and the sequence model need one (padding) column.
        ids = tf.pad(ids, [[0, 0], [0, tf.maximum(1 - tf.shape(ids)[1], 0)]])
        emb = self.item_embedding(ids)  # [B, H, E]
        valid = tf.not_equal(ids, 0)
        if self.kind == "mean":
            return self.pool(emb, ids)
        if self.kind == "sasrec":
            return self.sequence(emb, valid, training=training)
        if self.kind == "gru":
            # Keras masking skips padded steps; the output at each row's latest item.
            out = self.gru(emb, mask=valid, training=training)
            lengths = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
            last = tf.gather(out, tf.maximum(lengths - 1, 0), batch_dims=1)
            return tf.where((lengths > 0)[:, None], last, tf.zeros_like(last))
        length = tf.shape(ids)[1]
        emb = emb + self.positions(tf.range(length))[None]
        attn_mask = tf.logical_and(valid[:, :, None], valid[:, None, :])
        x = self.norm1(emb + self.attention(emb, emb, attention_mask=attn_mask, training=training))
        x = self.norm2(x + self.ffn(x))
        return self.pool(x, ids)


    def call_sequence(self, ids, training=False):
        """[B, L] item indices, left-padded (0), oldest first -> [B, L, D]: the encoding of each prefix."""
        if self.kind not in self.SEQUENCE_KINDS:
            raise ValueError(f"history encoder {self.kind!r} has no per-prefix form: the sequence objective "
                             f"needs one of {', '.join(self.SEQUENCE_KINDS)}")
        emb = self.item_embedding(ids)
        valid = tf.not_equal(ids, 0)
        if self.kind == "sasrec":
            return self.sequence.call_all(emb, valid, training=training)
        if self.kind == "gru":
            out = self.gru(emb, mask=valid, training=training)
            return out * tf.cast(valid, out.dtype)[..., None]
        mask = tf.cast(valid, emb.dtype)[..., None]
        return tf.cumsum(emb * mask, axis=1) / tf.maximum(tf.cumsum(mask, axis=1), 1.0)


class CausalBlock(tf.keras.layers.Layer):
    """Pre-LN Transformer block: x + attn(LN(x)) under ``mask``, then x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.norm1 = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.norm2 = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.attention = tf.keras.layers.MultiHeadAttention(heads, key_dim=max(8, dim // heads), dropout=dropout)
        self.ffn = tf.keras.Sequential([tf.keras.layers.Dense(dim, activation="gelu"), tf.keras.layers.Dropout(dropout),
                                        tf.keras.layers.Dense(dim)])
        self.drop = tf.keras.layers.Dropout(dropout)

    def call(self, x, mask, training=False):
        h = self.norm1(x)
        x = x + self.drop(self.attention(h, h, attention_mask=mask, training=training), training=training)
        return x + self.drop(self.ffn(self.norm2(x), training=training), training=training)


class CausalSequence(tf.keras.layers.Layer):
    """SASRec's sequence model: [B, H, E] item embeddings (oldest first, ``valid`` [B, H]) -> [B, E].

    Positions count back from the latest item (1 = most recent), so the same item
    at the same recency gets the same position however long the history is; each
    position attends to itself and earlier items only (causal) and the output at the
    latest item is the encoding. An empty history (a new user, or a request
    without history for an unknown user) gets a learned vector of its own.

    Training: every example row is one event with the history strictly before it
    (tfx_pipeline/data/example_builder.py), so each position of a user's sequence
    is already a next-item training target of its own row; the sampled softmax
    with logQ correction is the retrieval task's (trainer/retrieval/model.py).
    """

    def __init__(self, dim: int, max_len: int, heads: int, blocks: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.max_len = dim, max_len
        self.positions = tf.keras.layers.Embedding(max_len + 1, dim, name="positions")
        self.blocks = [CausalBlock(dim, heads, dropout, name=f"block_{i}") for i in range(blocks)]
        self.norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.drop = tf.keras.layers.Dropout(dropout)
        self.empty = self.add_weight(name="empty_history", shape=[dim], initializer="zeros")

    def call(self, emb, valid, training=False):
        length = tf.shape(emb)[1]
        lengths = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)  # histories are right-padded
        back = lengths[:, None] - tf.range(length)[None, :]  # 1 = the latest item
        x = self._blocks(emb, valid, back, training)
        last = tf.gather(x, tf.maximum(lengths - 1, 0), batch_dims=1)
        return tf.where((lengths > 0)[:, None], last, tf.broadcast_to(self.empty, tf.shape(last)))

    def call_all(self, emb, valid, training=False):
        """Every position's output [B, L, E] for left-padded sequences (the latest item last).

        Positions count back from the end of the window, so the last position is encoded
        exactly as ``call`` encodes the same items as a history (SASRec's absolute positions
        of a right-aligned window); earlier positions see only the items up to themselves.
        """
        length = tf.shape(emb)[1]
        back = length - tf.range(length)[None, :]
        return self._blocks(emb, valid, back, training)

    def _blocks(self, emb, valid, back, training):
        length = tf.shape(emb)[1]
        pos = tf.where(valid, tf.clip_by_value(back, 1, self.max_len), 0)
        x = self.drop(emb * tf.sqrt(float(self.dim)) + self.positions(pos), training=training)
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)  # key <= query
        mask = tf.logical_and(causal[None], valid[:, None, :])
        for block in self.blocks:
            x = block(x, mask, training=training)
        return self.norm(x)


def embedding(rows: int, dim: int, name: str, l2: float = 0.0) -> tf.keras.layers.Embedding:
    """An embedding table; ``l2`` > 0 adds l2 x sum(table^2) to the loss (TFRS adds ``model.losses``)."""
    return tf.keras.layers.Embedding(rows, dim, name=name, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05),
                                     embeddings_regularizer=tf.keras.regularizers.l2(l2) if l2 > 0 else None)


def mlp(units, out_dim: int, dropout: float, name: str) -> tf.keras.Sequential:
    layers = []
    for u in units:
        layers += [tf.keras.layers.Dense(u, activation="relu"), tf.keras.layers.Dropout(dropout)]
    layers.append(tf.keras.layers.Dense(out_dim))
    return tf.keras.Sequential(layers, name=name)


class ItemEncoder(tf.keras.layers.Layer):
    """Concatenated item features: id embedding + content (genres, title tokens, numerics)."""

    def __init__(self, layout: FeatureLayout, item_embedding, feature_dim: int, use_id: bool = True,
                 use_content: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.layout, self.item_embedding, self.use_id, self.use_content = layout, item_embedding, use_id, use_content
        self.pool = MaskedMean()
        names = (*layout.item_cats, *layout.item_lists, *[k + F.BUCKET_SUFFIX for k in layout.item_nums])
        self.embeddings = {n: embedding(layout.sizes[n], feature_dim, f"emb_{n}") for n in names} if use_content else {}

    def call(self, x):
        parts = []
        if self.use_id:
            parts.append(self.item_embedding(x[F.ITEM_ID_IDX]))
        if self.use_content:
            for n in self.layout.item_cats:
                parts.append(self.embeddings[n](x[n]))
            for n in self.layout.item_lists:
                parts.append(self.pool(self.embeddings[n](x[n]), x[n]))
            for k in self.layout.item_nums:
                parts.append(self.embeddings[k + F.BUCKET_SUFFIX](x[k + F.BUCKET_SUFFIX]))
                parts.append(tf.expand_dims(tf.cast(x[k + F.Z_SUFFIX], self.compute_dtype), -1))
        return tf.concat(parts, axis=-1)


class QueryEncoder(tf.keras.layers.Layer):
    """Concatenated query features: user id, user features, history, context."""

    def __init__(self, layout: FeatureLayout, item_embedding, hp, history_len: int, **kwargs):
        super().__init__(**kwargs)
        self.layout, self.hp = layout, hp
        d = hp.feature_embedding_dim
        self.user_embedding = embedding(layout.num_users, hp.id_embedding_dim, "emb_user_id", hp.embedding_l2)
        names = (*layout.user_cats, *[k + F.BUCKET_SUFFIX for k in layout.user_nums])
        self.embeddings = {n: embedding(layout.sizes[n], d, f"emb_{n}") for n in names}
        self.hour = embedding(F.HOURS_IN_DAY + 1, d, "emb_hour")
        self.day = embedding(F.DAYS_IN_WEEK + 1, d, "emb_day")
        self.history = HistoryEncoder(hp.history_encoder, item_embedding, hp.id_embedding_dim, history_len,
                                      heads=hp.attention_heads, dropout=hp.dropout, blocks=hp.sequence_blocks)

    def call(self, x, training=False):
        history = self.history(x[F.HISTORY_IDX], training=training) if self.hp.use_history else None
        return tf.concat(self._parts(x, history, lambda t: t), axis=-1)

    def call_sequence(self, x, training=False):
        """Every position of left-padded sequences at once: [B, L, features].

        ``x``: the user's features [B] (id and side features), ``history_item_ids_idx``
        [B, L] the items (left-padded), the context of each position's *next* event
        (hour, weekday, recency) [B, L]. Position t is the query that predicts the event
        after item t, as ``call`` is for a history ending at item t.
        """
        length = tf.shape(x[F.HISTORY_IDX])[1]
        history = self.history.call_sequence(x[F.HISTORY_IDX], training=training) if self.hp.use_history else None
        per_user = lambda t: tf.repeat(t[:, None], length, axis=1)  # noqa: E731 - [B, ...] -> [B, L, ...]
        return tf.concat(self._parts(x, history, per_user), axis=-1)

    def _parts(self, x, history, per_user):
        parts = []
        if self.hp.use_user_id:
            parts.append(per_user(self.user_embedding(x[F.USER_ID_IDX])))
        if self.hp.use_content_features:
            for n in self.layout.user_cats:
                parts.append(per_user(self.embeddings[n](x[n])))
            for k in self.layout.user_nums:
                parts.append(per_user(self.embeddings[k + F.BUCKET_SUFFIX](x[k + F.BUCKET_SUFFIX])))
                parts.append(per_user(tf.expand_dims(tf.cast(x[k + F.Z_SUFFIX], self.compute_dtype), -1)))
        if history is not None:
            parts.append(history)
        if self.hp.use_context:
            parts += [self.hour(x[F.HOUR_OF_DAY]), self.day(x[F.DAY_OF_WEEK]),
                      tf.expand_dims(tf.cast(x[F.RECENCY_Z], self.compute_dtype), -1)]
        return parts
