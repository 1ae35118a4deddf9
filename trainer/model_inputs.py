"""From Transform's outputs to the dense tensors the models take.

Transform emits [B] / [B, 1] dense tensors and SparseTensors for variable-length
features. Models take dense tensors with indices shifted by +1 so that 0 is
padding: ``history_item_ids_idx`` [B, H], ``item_genres_idx`` [B, M], ... One
function does this for training input pipelines and for the exported signatures.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_transform as tft

from trainer import features as F


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """Which transformed features exist and their embedding input sizes."""

    sizes: dict  # transformed idx/bucket feature -> embedding rows (vocab + OOV + padding)
    user_cats: tuple[str, ...]  # user categorical idx features
    user_nums: tuple[str, ...]  # user numeric base keys (have _z and _bucket)
    item_cats: tuple[str, ...]  # item categorical idx features
    item_lists: tuple[str, ...]  # item multi-valued idx / text token features ([B, M])
    item_nums: tuple[str, ...]  # item numeric base keys
    list_features: tuple[str, ...]  # every [B, M] feature, history included

    @property
    def num_users(self) -> int:
        return self.sizes[F.USER_ID_IDX]

    @property
    def num_items(self) -> int:
        return self.sizes[F.ITEM_ID_IDX]


def layout_from_transform(tf_transform_output: tft.TFTransformOutput, side_features: dict) -> FeatureLayout:
    def rows(vocab_name: str) -> int:
        # vocabulary + OOV bucket(s) + the padding row 0.
        return tf_transform_output.vocabulary_size_by_name(vocab_name) + F.OOV_BUCKETS + 1

    sizes = {
        F.USER_ID_IDX: rows(F.USER_VOCAB),
        F.ITEM_ID_IDX: rows(F.ITEM_VOCAB),
        F.HISTORY_IDX: rows(F.ITEM_VOCAB),
        F.HOUR_OF_DAY: F.HOURS_IN_DAY + 1,
        F.DAY_OF_WEEK: F.DAYS_IN_WEEK + 1,
    }
    user_cats, user_nums, item_cats, item_lists, item_nums = [], [], [], [], []
    for key, kind in sorted(side_features.items()):
        is_user = key.startswith(F.USER_FEATURE_PREFIX)
        if kind == F.NUMERIC:
            (user_nums if is_user else item_nums).append(key)
            sizes[key + F.BUCKET_SUFFIX] = F.NUM_NUMERIC_BUCKETS + 2
        elif kind == F.CATEGORICAL:
            (user_cats if is_user else item_cats).append(key + F.IDX_SUFFIX)
            sizes[key + F.IDX_SUFFIX] = rows(key)
        elif kind == F.MULTI_VALUED:
            item_lists.append(key + F.IDX_SUFFIX)
            sizes[key + F.IDX_SUFFIX] = rows(key)
        elif kind == F.TEXT:
            item_lists.append(key + F.TOKENS_SUFFIX)
            sizes[key + F.TOKENS_SUFFIX] = rows(key)
    return FeatureLayout(
        sizes=sizes, user_cats=tuple(user_cats), user_nums=tuple(user_nums), item_cats=tuple(item_cats),
        item_lists=tuple(item_lists), item_nums=tuple(item_nums),
        list_features=(F.HISTORY_IDX, *item_lists),
    )


def to_model_inputs(transformed: dict, layout: FeatureLayout) -> dict:
    """Dense, padding-shifted model inputs from Transform outputs (training or serving)."""
    out = {}
    for name, value in transformed.items():
        if name in layout.list_features:
            if isinstance(value, tf.RaggedTensor):
                value = value.to_sparse()
            if isinstance(value, tf.SparseTensor):
                value = tf.sparse.to_dense(value, default_value=tf.constant(-1, value.dtype))
            value = tf.cast(value, tf.int64) + 1  # -1 padding -> 0
            # At least one (padding) column: when no row of a batch has a value (every history
            # empty, e.g. a log whose timestamps are all equal) the list is [B, 0], and
            # tf.data's unbatch() crashes the process (SIGSEGV in TF 2.16) on a zero-size
            # component; the encoders mask index 0, so the column changes no result.
            out[name] = tf.pad(value, [[0, 0], [0, tf.maximum(1 - tf.shape(value)[1], 0)]])
            continue
        if isinstance(value, tf.SparseTensor):
            value = tf.sparse.to_dense(value)
        if value.shape.rank == 2:
            value = tf.squeeze(value, axis=1)
        if name in layout.sizes and name not in (F.HOUR_OF_DAY, F.DAY_OF_WEEK):
            value = tf.cast(value, tf.int64) + 1  # shift: 0 is reserved for padding
        out[name] = value
    return out


# What the Transform graph gives a request without context (hour / day / hours since the
# previous event sent as -1): index 0 of the hour and day embeddings, a recency z of 0.
UNKNOWN_CONTEXT = {F.HOUR_OF_DAY: 0, F.DAY_OF_WEEK: 0, F.RECENCY_Z: 0.0}


def drop_context(rate: float, seed: int):
    """A training-batch map fn: each row's context set to ``UNKNOWN_CONTEXT`` with probability ``rate``.

    The draw has the context's shape: one per row of a [B] batch, one per position of the
    sequence objective's [B, L] windows (trainer/retrieval/sequence.py).

    Requests without context are common at serving (the client knows no time, or a batch
    job scores offline); without this the "unknown" rows of the context embeddings are
    never trained and such requests score with untrained weights.
    """
    def fn(batch: dict) -> dict:
        if rate <= 0.0 or not all(k in batch for k in UNKNOWN_CONTEXT):
            return batch
        batch = dict(batch)
        drop = tf.random.uniform(tf.shape(batch[F.HOUR_OF_DAY]), seed=seed) < rate
        for key, unknown in UNKNOWN_CONTEXT.items():
            value = batch[key]
            batch[key] = tf.where(drop, tf.cast(tf.fill(tf.shape(value), unknown), value.dtype), value)
        return batch

    return fn


def drop_user_id(rate: float, unknown_index: int, seed: int):
    """A training-batch map fn: each row's user id index set to ``unknown_index`` (the vocabulary's
    OOV row, where every user the Transform vocabulary has not seen lands) with probability ``rate``.

    Without it that row is never trained: a new user (a global time split's eval users are
    often new; a request for a user who signed up after training) is embedded with the
    initial random vector. With it the row learns "a user we know nothing about by id", and
    the rest of the query (features, history, context) learns to carry such a user.
    """
    def fn(batch: dict) -> dict:
        if rate <= 0.0 or F.USER_ID_IDX not in batch:
            return batch
        batch = dict(batch)
        ids = batch[F.USER_ID_IDX]
        drop = tf.random.uniform(tf.shape(ids), seed=seed + 1) < rate
        batch[F.USER_ID_IDX] = tf.where(drop, tf.cast(tf.fill(tf.shape(ids), unknown_index), ids.dtype), ids)
        return batch

    return fn

