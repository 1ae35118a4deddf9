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

Both losses are means over the *global* batch's rows (``compute_loss``): each replica sums its
rows' per-example losses and divides by the rows of all replicas together, so under
MirroredStrategy / MultiWorkerMirroredStrategy (trainer/distribute.py), where the optimizer sums
the replicas' gradients, a step is the single-replica step on the same global batch, and the
loss a step logs is the replicas' losses summed; with one replica it is the batch mean, as a
Keras loss's default reduction gives.
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


def group_name(tensor_name: str) -> str:
    """Model-input tensor name -> its feature group: item_genres_idx -> item_genres, item_title_tokens -> item_title."""
    for suffix in (F.IDX_SUFFIX, F.TOKENS_SUFFIX):
        if tensor_name.endswith(suffix):
            return tensor_name[: -len(suffix)]
    return tensor_name


class RankingModel(tfrs.Model):
    def __init__(self, layout: FeatureLayout, hp, history_length: int, rating_mean: float = 0.0,
                 engagement_rate: float = 0.5, cross_projection_dim: int | None = None):
        super().__init__()
        self.distribute_reduction_method = "first"  # the logged values are global on every replica: _global_logs
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
        # Per-example losses (no reduction): ``compute_loss`` averages them over the global batch.
        # Keras' default (AUTO) reduction is refused in a distribution strategy's replica context.
        none = tf.keras.losses.Reduction.NONE
        self.rating_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(reduction=none),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")])
        self.engagement_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=none),
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

    def feature_group_widths(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(query, item): the feature groups of each encoder's output, in column order, with their widths.

        The names are the permutation importance's (trainer/ranking/train.py ``feature_groups``):
        user_id, user_<feature>, history, hour_of_day, day_of_week, recency on the query side;
        item_id, item_<feature> on the item side. A numeric feature's group holds its bucket
        embedding and its z-score column. Mirrors ``QueryEncoder._parts`` / ``ItemEncoder.call``:
        ``explain_encoded`` checks the widths against the encoded tensors.
        """
        q, i = self.query_encoder, self.item_encoder
        qhp, layout = q.hp, q.layout
        query: list[tuple[str, int]] = []
        if qhp.use_user_id:
            query.append((F.USER_ID, q.user_embedding.output_dim))
        if qhp.use_content_features:
            query += [(group_name(n), q.embeddings[n].output_dim) for n in layout.user_cats]
            query += [(k, q.embeddings[k + F.BUCKET_SUFFIX].output_dim + 1) for k in layout.user_nums]
        if qhp.use_history:
            h = q.history
            query.append(("history", h.dim if h.kind == "gru" else h.item_embedding.output_dim))
        if qhp.use_context:
            query += [("hour_of_day", q.hour.output_dim), ("day_of_week", q.day.output_dim), ("recency", 1)]
        item: list[tuple[str, int]] = []
        if i.use_id:
            item.append((F.ITEM_ID, i.item_embedding.output_dim))
        if i.use_content:
            item += [(group_name(n), i.embeddings[n].output_dim) for n in (*layout.item_cats, *layout.item_lists)]
            item += [(k, i.embeddings[k + F.BUCKET_SUFFIX].output_dim + 1) for k in layout.item_nums]
        return query, item

    def feature_group_names(self) -> list[str]:
        query, item = self.feature_group_widths()
        return [name for name, _ in (*query, *item)]

    def group_membership(self) -> tf.Tensor:
        """[Dq + Di, G] float32 one-hot: column d of x0 (``score_encoded``'s concat) belongs to group g."""
        query, item = self.feature_group_widths()
        rows = []
        for g, (_, width) in enumerate((*query, *item)):
            rows += [g] * width
        return tf.one_hot(rows, len(query) + len(item), dtype=tf.float32)

    def explain_encoded(self, query: tf.Tensor, item: tf.Tensor) -> dict:
        """Gradient x input of each head per feature group, on encoded rows (as ``score_encoded``).

        For each row n and head h (the engagement *logit*, and the rating), with x0 = concat(query, item)
        the vector the cross layers read: ``a[n, g] = sum_{d in g} x0[n, d] * d h(x0[n]) / d x0[n, d]``.
        That is the first-order (Taylor) share of group g in h(x0) - h(0): the attributions sum to
        about h(x0) - h(with every encoded input zeroed), not exactly, and not to h itself (the
        heads' biases and the curvature of the cross / ReLU layers are left out). Equivalently,
        a[n, g] is the derivative of h with respect to scaling group g's encoded vector, at scale 1.
        Only the cross + deep layers and heads are differentiated: the encoders (embedding
        lookups, the history pooling) are the inputs, so a group's attribution is about its
        embedding vector as the model sees it, not about raw feature values.

        Returns {RATING: [N, G], ENGAGEMENT_LOGIT: [N, G], "scores": score_encoded's dict}.
        """
        dq, di = self.feature_group_widths()
        want_q, want_i = sum(w for _, w in dq), sum(w for _, w in di)
        if query.shape[-1] is not None and int(query.shape[-1]) != want_q:
            raise ValueError(f"query encoding has {query.shape[-1]} columns, the feature groups {want_q}: {dq}")
        if item.shape[-1] is not None and int(item.shape[-1]) != want_i:
            raise ValueError(f"item encoding has {item.shape[-1]} columns, the feature groups {want_i}: {di}")
        x0 = tf.concat([tf.cast(query, tf.float32), tf.cast(item, tf.float32)], axis=-1)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x0)
            out = self.score_encoded(x0[:, :want_q], x0[:, want_q:], training=False)
        members = self.group_membership()
        result = {"scores": out}
        for head in (RATING, ENGAGEMENT_LOGIT):
            # Each row's head reads only its own row of x0: the gradient of the sum is per row.
            grad = tape.gradient(out[head], x0)
            result[head] = tf.matmul(grad * x0, members)
        del tape
        return result

    # The loss is a mean over the global batch's rows (trainer/training_logs.py reads this): under R
    # replicas each one's loss is its share of it; the train and test steps log the global mean.
    loss_over_global_batch = True

    def train_step(self, inputs):
        return self._global_logs(super().train_step(inputs))

    def test_step(self, inputs):
        return self._global_logs(super().test_step(inputs))

    @staticmethod
    def _global_logs(logs: dict) -> dict:
        """A step's logs, the same on every replica: the loss summed over the replicas (their shares
        of the global batch's mean), the metrics as they are (Keras metrics already report the
        global value). Keras then keeps the first replica's (``distribute_reduction_method``
        "first"): its default sums the replicas' logs, which under MultiWorkerMirroredStrategy
        would also sum the metrics (an AUC of 1.3 with two workers). One replica: unchanged."""
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return logs
        loss = context.all_reduce(tf.distribute.ReduceOp.SUM, logs["loss"])
        return {**logs, "loss": loss, "total_loss": loss + logs["regularization_loss"]}

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        """rating_loss_weight x the weighted MSE + engagement_loss_weight x the BCE, each a mean over
        the global batch's rows: the sum of this replica's per-example losses divided by the rows of
        every replica's batch (``global_rows``). A row's rating weight (``rating_weight``, 0 for
        logged exposures) scales its squared error; its row still counts in the divisor, as Keras'
        default reduction (sum over batch size) counts it."""
        out = self(inputs, training=training)
        # Logged exposures carry no rating: their rows weigh 0 in the rating loss (and RMSE).
        # Columns [B, 1], so the per-example losses are [B] and the weights apply row by row.
        weight = inputs.get(F.RATING_WEIGHT)
        rating_loss = self.rating_task(labels=tf.cast(inputs[F.RATING_LABEL], tf.float32)[:, None],
                                       predictions=out[RATING][:, None],
                                       sample_weight=None if weight is None else weight[:, None])
        engagement_loss = self.engagement_task(labels=tf.cast(inputs[F.ENGAGED_LABEL], tf.float32)[:, None],
                                               predictions=out[ENGAGEMENT_LOGIT][:, None])
        rows = global_rows(tf.shape(out[RATING])[0])
        return (self.hp.rating_loss_weight * tf.math.divide_no_nan(tf.reduce_sum(rating_loss), rows)
                + self.hp.engagement_loss_weight * tf.math.divide_no_nan(tf.reduce_sum(engagement_loss), rows))


def global_rows(local_rows: tf.Tensor) -> tf.Tensor:
    """The rows of the global batch (float32) from this replica's ``local_rows``: summed over the
    replicas in sync (one scalar all-reduce) in a replica context of several; ``local_rows`` itself
    under one replica or in a cross-replica context (the whole batch is here).

    Counted, not assumed to be local rows x replicas: a last evaluation batch smaller than the
    global batch splits unevenly over the replicas (some may get no row)."""
    rows = tf.cast(local_rows, tf.float32)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return rows
    return tf.stop_gradient(context.all_reduce(tf.distribute.ReduceOp.SUM, rows))
