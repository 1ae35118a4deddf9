"""The two retrieval towers: encoder -> MLP -> L2-normalized embedding.

The item-id embedding table is shared by the query tower's history encoder and the
candidate tower, so "what the user watched" and "what we recommend" live in one space.
"""

from __future__ import annotations

import tensorflow as tf

from trainer.encoders import ItemEncoder, QueryEncoder, embedding, mlp
from trainer.model_inputs import FeatureLayout


class Tower(tf.keras.Model):
    """Encoder -> MLP -> L2-normalized embedding [B, D]."""

    def __init__(self, encoder: tf.keras.layers.Layer, hp, name: str):
        super().__init__(name=name)
        self.encoder = encoder
        self.mlp = mlp(hp.hidden_units, hp.embedding_dim, hp.dropout, f"{name}_mlp")

    def call(self, x, training=False):
        return tf.math.l2_normalize(self.unnormalized(x, training=training), axis=-1)

    def unnormalized(self, x, training=False):
        """The MLP's output before the L2 normalisation [B, D] (its norm sets no score; the
        retrieval diagnosis, trainer/retrieval/diagnosis.py, reads it)."""
        kwargs = {"training": training} if isinstance(self.encoder, QueryEncoder) else {}
        # float32 out under a mixed policy: the logits, the logQ correction and the index are float32.
        return tf.cast(self.mlp(self.encoder(x, **kwargs), training=training), tf.float32)

    def call_sequence(self, x, training=False):
        """The query tower at every position of left-padded sequences: [B, L, D] (QueryEncoder.call_sequence)."""
        out = tf.cast(self.mlp(self.encoder.call_sequence(x, training=training), training=training), tf.float32)
        return tf.math.l2_normalize(out, axis=-1)


def build_towers(layout: FeatureLayout, hp, history_len: int) -> tuple[Tower, Tower]:
    item_embedding = embedding(layout.num_items, hp.id_embedding_dim, "emb_item_id", hp.embedding_l2)
    query = Tower(QueryEncoder(layout, item_embedding, hp, history_len), hp, "query_tower")
    candidate = Tower(ItemEncoder(layout, item_embedding, hp.feature_embedding_dim, hp.use_item_id,
                                  hp.use_content_features), hp, "candidate_tower")
    return query, candidate
