"""DCN-v2 multitask ranking model (TFRS): predicted rating and engagement per (query, item).

Inputs (model inputs of trainer/model_inputs.py, one row per (query, item) pair):
  query: user id, user side features, history (masked mean of item-id embeddings),
         context (hour, weekday, recency)          -> encoders.QueryEncoder
  item:  item id + content features (title tokens, genres, numerics)
                                                    -> encoders.ItemEncoder
The item-id embedding table is shared by the history and the candidate item.

Architecture (stacked DCN-v2, Wang et al. 2021):
  x0 = concat(query features, item features)
  x  = Cross_L(... Cross_1(x0, x0) ...)     num_cross_layers tfrs.layers.dcn.Cross
                                            (full rank, or low rank with projection_dim)
  h  = MLP(x)                               deep_units, ReLU + dropout
  rating = Dense(1)(h)                      regression head, MSE, RMSE metric
  engagement_logit = Dense(1)(h)            binary head (label ``engaged``), BCE on logits, AUC
  loss = rating_loss_weight * MSE + engagement_loss_weight * BCE
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import features as F
from trainer.model_inputs import FeatureLayout
from trainer.encoders import ItemEncoder, QueryEncoder, embedding

RATING = "rating"
ENGAGEMENT_LOGIT = "engagement_logit"


@dataclasses.dataclass(frozen=True)
class EncoderHParams:
    """What encoders.QueryEncoder reads from an hparams object, derived from RankingHParams."""

    id_embedding_dim: int
    feature_embedding_dim: int
    dropout: float
    history_encoder: str = "mean"
    attention_heads: int = 2
    sequence_blocks: int = 2
    embedding_l2: float = 0.0
    use_user_id: bool = True
    use_content_features: bool = True
    use_history: bool = True
    use_context: bool = True


def encoder_hparams(hp) -> EncoderHParams:
    return EncoderHParams(id_embedding_dim=hp.embedding_dim,
                          feature_embedding_dim=max(4, hp.embedding_dim // 2), dropout=hp.dropout)


class RankingModel(tfrs.Model):
    def __init__(self, layout: FeatureLayout, hp, history_length: int, rating_mean: float = 0.0,
                 engagement_rate: float = 0.5, cross_projection_dim: int | None = None):
        super().__init__()
        self.hp = hp
        ehp = encoder_hparams(hp)
        self.item_embedding = embedding(layout.num_items, ehp.id_embedding_dim, "emb_item_id")
        self.query_encoder = QueryEncoder(layout, self.item_embedding, ehp, history_length, name="query_encoder")
        self.item_encoder = ItemEncoder(layout, self.item_embedding, ehp.feature_embedding_dim, name="item_encoder")
        self.cross_layers = [tfrs.layers.dcn.Cross(projection_dim=cross_projection_dim, kernel_initializer="glorot_uniform",
                                                   name=f"cross_{i}") for i in range(hp.num_cross_layers)]
        deep = []
        for units in hp.deep_units:
            deep += [tf.keras.layers.Dense(units, activation="relu"), tf.keras.layers.Dropout(hp.dropout)]
        self.deep = tf.keras.Sequential(deep, name="deep")
        # Heads start at the training base rates, so the first steps learn structure, not the mean.
        p = min(max(engagement_rate, 1e-3), 1 - 1e-3)
        self.rating_head = tf.keras.layers.Dense(
            1, dtype="float32", name="rating_head", bias_initializer=tf.keras.initializers.Constant(rating_mean))
        self.engagement_head = tf.keras.layers.Dense(
            1, dtype="float32", name="engagement_head",
            bias_initializer=tf.keras.initializers.Constant(math.log(p / (1 - p))))
        self.rating_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")])
        self.engagement_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")])

    def call(self, inputs: dict, training: bool = False) -> dict:
        return self.score_encoded(self.query_encoder(inputs, training=training), self.item_encoder(inputs),
                                  training=training)

    def score_encoded(self, query: tf.Tensor, item: tf.Tensor, training: bool = False) -> dict:
        """The heads on encoded rows: ``query`` [N, Dq] from ``query_encoder``, ``item`` [N, Di]
        from ``item_encoder``. Neither encoder sees the other side, so the export encodes each
        query once and every catalogue item once at export time, not once per (query, item) pair."""
        x0 = tf.concat([tf.cast(query, tf.float32), tf.cast(item, tf.float32)], axis=-1)
        x0 = tf.cast(x0, self.compute_dtype)
        x = x0
        for cross in self.cross_layers:
            x = cross(x0, x)
        h = self.deep(x, training=training)
        # Heads in float32 under a mixed policy: the losses, metrics and signatures are float32.
        return {RATING: tf.squeeze(tf.cast(self.rating_head(h), tf.float32), -1),
                ENGAGEMENT_LOGIT: tf.squeeze(tf.cast(self.engagement_head(h), tf.float32), -1)}

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        out = self(inputs, training=training)
        # Logged exposures carry no rating: their rows weigh 0 in the rating loss (and RMSE).
        # Columns [B, 1], so the per-example MSE is [B] and the weights apply row by row.
        weight = inputs.get(F.RATING_WEIGHT)
        rating_loss = self.rating_task(labels=tf.cast(inputs[F.RATING_LABEL], tf.float32)[:, None],
                                       predictions=out[RATING][:, None],
                                       sample_weight=None if weight is None else weight[:, None])
        engagement_loss = self.engagement_task(labels=tf.cast(inputs[F.ENGAGED_LABEL], tf.float32),
                                               predictions=out[ENGAGEMENT_LOGIT])
        return self.hp.rating_loss_weight * rating_loss + self.hp.engagement_loss_weight * engagement_loss
