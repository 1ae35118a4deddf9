"""Two-tower retrieval model (TFRS) with in-batch softmax and its corrections.

Loss: ``tfrs.tasks.Retrieval`` over in-batch negatives, with
- sampling-probability (logQ) correction: popular items appear as in-batch
  negatives more often than uniform sampling would; subtracting log(p) from
  their logits removes that bias (Yi et al., 2019);
- accidental-hit removal: an in-batch "negative" that is the positive item itself
  (the same item twice in a batch) is not penalized;
- optional hard negatives: the top-n scoring in-batch negatives only;
- optional mixed negatives (Yang et al., 2020): ``uniform_negatives`` catalogue items
  drawn uniformly per batch join the in-batch candidates, so items that are rarely in a
  batch (the tail) are negatives too; the logQ correction then uses each candidate's
  probability under the mixture, (B p(item) + N / catalogue size) / (B + N);
- or, with ``negatives: catalogue``, a softmax over the whole catalogue at every step
  (every item a negative of every row, the candidate tower run over the catalogue once per
  batch): no sampling, so neither correction applies (as the sequence objective's loss).
Top-K metrics are computed at evaluation by trainer/retrieval/metrics.py, never
per training step.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import features as F
from trainer.distribute import policy_scope
from trainer.retrieval.sequence import catalogue_rows, catalogue_softmax_loss, time_order
from trainer.retrieval.towers import Tower

SAMPLING_PROBABILITY = "sampling_probability"


class RetrievalModel(tfrs.Model):
    def __init__(self, query_tower: Tower, candidate_tower: Tower, hp, catalogue: dict | None = None,
                 item_probabilities=None, full_softmax: bool = False):
        """``catalogue``: every item's candidate-tower inputs and ``item_probabilities`` [num_items]
        (p(item) by item index), both needed when ``hp.uniform_negatives`` > 0 or ``full_softmax``
        (the loss is a softmax over the whole ``catalogue``)."""
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.hp = hp
        self.full_softmax = bool(full_softmax)
        self.uniform_negatives = 0 if self.full_softmax else int(hp.uniform_negatives)
        if (self.uniform_negatives or self.full_softmax) and (catalogue is None or item_probabilities is None):
            raise ValueError("uniform_negatives and the catalogue softmax need the catalogue's candidate inputs "
                             "and item probabilities")
        self.catalogue = catalogue
        if self.full_softmax:  # item index -> catalogue row (-1: not a candidate)
            self.item_rows = tf.constant(catalogue_rows(catalogue, len(item_probabilities)))
        self.item_probabilities = (tf.constant(item_probabilities, tf.float32)
                                   if item_probabilities is not None else None)
        self.task = tfrs.tasks.Retrieval(
            temperature=hp.temperature,
            remove_accidental_hits=hp.remove_accidental_hits,
            num_hard_negatives=hp.num_hard_negatives or None,
        )

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        query = self.query_tower(inputs, training=training)
        if self.full_softmax:
            return self._catalogue_loss(query, inputs[F.ITEM_ID_IDX], training)
        candidate = self.candidate_tower(inputs, training=training)
        probability, ids = inputs.get(SAMPLING_PROBABILITY), inputs[F.ITEM_ID_IDX]
        if self.uniform_negatives and training:
            size = tf.shape(next(iter(self.catalogue.values())))[0]
            pick = tf.random.uniform([self.uniform_negatives], 0, size, dtype=tf.int32)
            extra_inputs = {k: tf.gather(v, pick) for k, v in self.catalogue.items()}
            extra_ids = tf.cast(extra_inputs[F.ITEM_ID_IDX], ids.dtype)
            candidate = tf.concat([candidate, self.candidate_tower(extra_inputs, training=training)], axis=0)
            if probability is not None:
                # P(a draw of the mixed sample is this item): (B p + N / size) / (B + N), <= 1 as
                # TFRS's correction requires (it clips at 1); a common factor would not matter.
                b, n = tf.cast(tf.shape(query)[0], tf.float32), float(self.uniform_negatives)
                probability = tf.concat([probability, tf.gather(self.item_probabilities, extra_ids)], 0)
                probability = (b * probability + n / tf.cast(size, tf.float32)) / (b + n)
            ids = tf.concat([ids, extra_ids], axis=0)
        # The loss in float32 under a mixed policy (the towers' outputs are float32 already):
        # TFRS builds its correction layers when called, under the global policy of that moment.
        with policy_scope("float32"):
            return self.task(
                query,
                candidate,
                candidate_sampling_probability=probability if self.hp.logq_correction else None,
                candidate_ids=ids if self.hp.remove_accidental_hits else None,
                compute_metrics=False,
            )

    def _catalogue_loss(self, query, items, training: bool) -> tf.Tensor:
        """Mean softmax cross-entropy of each row's item over every catalogue item (rows whose item
        is not a candidate are left out)."""
        rows = tf.gather(self.item_rows, tf.cast(items, tf.int64))
        keep = rows >= 0
        query, rows = tf.boolean_mask(query, keep), tf.boolean_mask(rows, keep)
        with policy_scope("float32"):
            return catalogue_softmax_loss(query, rows, self.candidate_tower, self.catalogue, self.hp.temperature,
                                          training)


FUTURE_ITEMS = "future_item_ids_idx"  # [W]: this event's item and the user's next W - 1 (0 = none)


def future_items(items: np.ndarray, users: np.ndarray, timestamps: np.ndarray, window: int) -> np.ndarray:
    """[N, window]: each event's item index and those of the same user's next ``window - 1``
    events in time order (ties in file order), 0 past the user's last; rows in file order."""
    order = time_order(users, timestamps)
    sorted_users, sorted_items = users[order], items[order].astype(np.int64)
    out = np.zeros((len(items), window), np.int64)
    for offset in range(window):
        same = np.zeros(len(items), bool)
        if offset < len(items):
            same[:len(items) - offset] = sorted_users[offset:] == sorted_users[:len(items) - offset]
        shifted = np.zeros(len(items), np.int64)
        shifted[:len(items) - offset] = sorted_items[offset:]
        out[order, offset] = np.where(same, shifted, 0)
    return out


def draw_future_target(catalogue: dict, num_items: int, seed: int):
    """A training-batch map fn: each row's positive becomes an item drawn uniformly from its
    ``FUTURE_ITEMS`` (the candidate-tower inputs gathered from ``catalogue``, by item index)."""
    item_rows = tf.constant(np.maximum(catalogue_rows(catalogue, num_items), 0))

    def fn(batch: dict) -> dict:
        batch = dict(batch)
        future = batch.pop(FUTURE_ITEMS)  # [B, W]
        count = tf.reduce_sum(tf.cast(future > 0, tf.int32), axis=1)
        pick = tf.cast(tf.random.uniform(tf.shape(count), seed=seed) * tf.cast(tf.maximum(count, 1), tf.float32),
                       tf.int32)
        target = tf.gather(future, tf.minimum(pick, tf.maximum(count - 1, 0)), batch_dims=1)
        target = tf.where(count > 0, target, tf.cast(batch[F.ITEM_ID_IDX], target.dtype))
        picked = tf.gather(item_rows, target)
        for key, values in catalogue.items():
            if key in batch:
                batch[key] = tf.cast(tf.gather(values, picked), batch[key].dtype)
        return batch

    return fn


def item_probabilities(item_counts) -> tf.Tensor:
    """p(item) = count / total by item index (at least 1e-9)."""
    probs = tf.cast(item_counts, tf.float32) / tf.cast(tf.reduce_sum(item_counts), tf.float32)
    return tf.maximum(probs, 1e-9)


def add_sampling_probability(item_counts: tf.Tensor):
    """A dataset map fn adding p(item) = count / total for the batch's positives."""
    probs = item_probabilities(item_counts)

    def fn(batch: dict) -> dict:
        batch = dict(batch)
        batch[SAMPLING_PROBABILITY] = tf.gather(probs, batch[F.ITEM_ID_IDX])
        return batch

    return fn
