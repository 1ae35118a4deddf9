"""Two-tower retrieval model (TFRS) with in-batch softmax and its corrections.

Loss: ``tfrs.tasks.Retrieval`` over in-batch negatives, with
- sampling-probability (logQ) correction: popular items appear as in-batch
  negatives more often than uniform sampling would; subtracting log(p) from
  their logits removes that bias (Yi et al., 2019);
- accidental-hit removal: an in-batch "negative" that is the positive item itself
  (the same item twice in a batch) is not penalized;
- optional hard negatives: the top-n scoring in-batch negatives only.
Top-K metrics are computed at evaluation by trainer/retrieval/metrics.py, never
per training step.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import features as F
from trainer.retrieval.towers import Tower

SAMPLING_PROBABILITY = "sampling_probability"


class RetrievalModel(tfrs.Model):
    def __init__(self, query_tower: Tower, candidate_tower: Tower, hp):
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.hp = hp
        self.task = tfrs.tasks.Retrieval(
            temperature=hp.temperature,
            remove_accidental_hits=hp.remove_accidental_hits,
            num_hard_negatives=hp.num_hard_negatives or None,
        )

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        query = self.query_tower(inputs, training=training)
        candidate = self.candidate_tower(inputs, training=training)
        return self.task(
            query,
            candidate,
            candidate_sampling_probability=inputs[SAMPLING_PROBABILITY] if self.hp.logq_correction else None,
            candidate_ids=inputs[F.ITEM_ID_IDX] if self.hp.remove_accidental_hits else None,
            compute_metrics=False,
        )


def add_sampling_probability(item_counts: tf.Tensor):
    """A dataset map fn adding p(item) = count / total for the batch's positives."""
    probs = tf.cast(item_counts, tf.float32) / tf.cast(tf.reduce_sum(item_counts), tf.float32)
    probs = tf.maximum(probs, 1e-9)

    def fn(batch: dict) -> dict:
        batch = dict(batch)
        batch[SAMPLING_PROBABILITY] = tf.gather(probs, batch[F.ITEM_ID_IDX])
        return batch

    return fn
