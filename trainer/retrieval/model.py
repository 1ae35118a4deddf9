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
  probability under the mixture, (B p(item) + N / catalogue size) / (B + N).
Top-K metrics are computed at evaluation by trainer/retrieval/metrics.py, never
per training step.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import features as F
from trainer.distribute import policy_scope
from trainer.retrieval.towers import Tower

SAMPLING_PROBABILITY = "sampling_probability"


class RetrievalModel(tfrs.Model):
    def __init__(self, query_tower: Tower, candidate_tower: Tower, hp, catalogue: dict | None = None,
                 item_probabilities=None):
        """``catalogue``: every item's candidate-tower inputs and ``item_probabilities`` [num_items]
        (p(item) by item index), both needed when ``hp.uniform_negatives`` > 0."""
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.hp = hp
        self.uniform_negatives = int(hp.uniform_negatives)
        if self.uniform_negatives and (catalogue is None or item_probabilities is None):
            raise ValueError("uniform_negatives needs the catalogue's candidate inputs and item probabilities")
        self.catalogue = catalogue
        self.item_probabilities = (tf.constant(item_probabilities, tf.float32)
                                   if item_probabilities is not None else None)
        self.task = tfrs.tasks.Retrieval(
            temperature=hp.temperature,
            remove_accidental_hits=hp.remove_accidental_hits,
            num_hard_negatives=hp.num_hard_negatives or None,
        )

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        query = self.query_tower(inputs, training=training)
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
