"""The popularity prior of retrieval scores: ``q . c + beta * temperature * log p(item)``.

The model's logits are cosines / temperature. With the logQ correction (or the catalogue
softmax) they should carry an item's popularity themselves; in practice they come out flatter than
the data (bounded cosines, dropout and regularization are our guess at why): on the three logs
measured (README "Popularity prior") adding a share of ``log p(item)`` back raised the
validation recall. ``beta`` is picked on the validation split after epoch selection
(``select``), never on the eval split, and stays 0 where it does not help; ``p`` comes
from the training counts the scored split may see (+1 smoothed, so an item never seen in
training gets the lowest).

Scores are dot products in serving (BruteForce and ScaNN), so the prior is served as one
more dimension: candidates ``[c, bias]`` against queries ``[q, 1]`` (``augment_*``). The
``query_embedding`` and ``candidate_embedding`` signatures keep the model's own vectors.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

AUTO = -1.0  # trainer.retrieval.popularity_prior: pick beta on validation
GRID = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def log_popularity(counts: np.ndarray) -> np.ndarray:
    """log p(item) from training counts, +1 smoothed: float64 [num_items]."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.log((counts + 1.0) / (counts.sum() + len(counts)))


def item_bias(counts: np.ndarray, beta: float, temperature: float) -> np.ndarray:
    """Each candidate's score offset, in the model's raw score units (logits x temperature): float32."""
    if beta <= 0:
        return np.zeros(len(counts), np.float32)
    return (beta * temperature * log_popularity(counts)).astype(np.float32)


def augment_candidates(embeddings: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[N, D] embeddings + [N] bias -> [N, D + 1]: a dot product with ``augment_queries`` adds the bias."""
    return np.concatenate([np.asarray(embeddings, np.float32), np.asarray(bias, np.float32)[:, None]], axis=1)


def augment_queries(queries: np.ndarray) -> np.ndarray:
    """[B, D] -> [B, D + 1] with a last column of ones (numpy)."""
    queries = np.asarray(queries, np.float32)
    return np.concatenate([queries, np.ones((len(queries), 1), np.float32)], axis=1)


def augment_query_tensor(query):
    """The serving graph's ``augment_queries``: [B, D] tensor -> [B, D + 1]."""
    import tensorflow as tf

    return tf.concat([query, tf.ones_like(query[:, :1])], axis=1)


def select(evaluate: Callable[[np.ndarray], float], counts: np.ndarray, temperature: float,
           grid=GRID) -> tuple[float, dict]:
    """The ``beta`` of ``grid`` with the best ``evaluate(bias)`` (the validation metric); ties go to
    the smaller beta, so no prior is kept unless it helps. Returns (beta, {beta: value})."""
    values = {float(beta): float(evaluate(item_bias(counts, beta, temperature))) for beta in grid}
    best = max(values, key=lambda b: (values[b], -b))
    return best, values


def describe(beta: float) -> str:
    return "off" if beta <= 0 else f"beta {beta:g}"
