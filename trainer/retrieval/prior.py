"""The popularity prior of retrieval scores: ``q . c + beta * temperature * log p(item)``.

The model's logits are cosines / temperature. With the logQ correction (or the catalogue
softmax) they should carry an item's popularity themselves; in practice they come out flatter than
the data (bounded cosines, dropout and regularization are our guess at why): on the three logs
measured (README "Popularity prior") adding a share of ``log p(item)`` back raised the
validation recall. ``beta`` is picked on the validation split after epoch selection
(``select``), never on the eval split, and stays 0 where it does not help; ``p`` comes
from the training counts the scored split may see (+1 smoothed, so an item never seen in
training gets the lowest).

Users with little activity lean on popularity more than the rest: the beta is picked per
activity bucket, by the number of history items a query carries (``ACTIVITY_EDGES``; bucket 0
is the cold users: no train events and no history sent, nothing the model knows of them; by
default only cold | the rest, ``COLD_EDGES``). A bucket with at least ``MIN_COLD_USERS``
validation users (fit events counted) gets its own beta, the cold bucket's from a grid reaching
further toward pure popularity (``COLD_GRID``); the others share ``beta``,
picked on their users together (on every user when those are fewer than that); when fewer
than two buckets could have their own and the rest is too small to pick on, every bucket
shares one ``beta``, picked on every user. Under a global
time split a third of MovieLens-1M's eval users are cold and popularity ranked their items
better than the model's unknown-user query did.

Scores are dot products in serving (BruteForce and ScaNN), so the prior is served as one
more dimension: candidates ``[c, bias]`` against queries ``[q, s]`` (``augment_*``), with
``bias`` at ``B`` = the largest beta and ``s`` = the query's bucket's beta / B
(``bucket_scales``; all 1 when the betas are equal). The ``query_embedding`` and
``candidate_embedding`` signatures keep the model's own vectors.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

AUTO = -1.0  # trainer.retrieval.popularity_prior: pick beta on validation
GRID = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
# beta_cold's grid: further toward ranking cold users by popularity alone.
COLD_GRID = GRID + (4.0, 8.0, 16.0)
# Fewer validation users than this in a bucket: it keeps the shared beta (too few to pick on).
MIN_COLD_USERS = 50
# Activity buckets by the history items a query carries (capped at the model's history length):
# 0 (cold) | 1 | 2-3 | 4-7 | 8-15 | 16+ (``trainer.retrieval.popularity_prior_by_activity``);
# without it only cold (0) | the rest.
ACTIVITY_EDGES = (1, 2, 4, 8, 16)
COLD_EDGES = (1,)


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


def bucket_scales(betas) -> tuple[float, np.ndarray]:
    """(B, scale per activity bucket): the stored bias is at beta ``B`` = the largest; a query's last
    component is its bucket's scale, so its scores carry its bucket's beta. B 0 (all off): scales 1
    over a zero bias."""
    betas = np.maximum(np.asarray(betas, np.float64), 0.0)
    top = float(betas.max()) if betas.size else 0.0
    if top <= 0:
        return 0.0, np.ones(len(betas), np.float32)
    return top, (betas / top).astype(np.float32)


def task_activity(task, cap: int) -> np.ndarray:
    """int [task users]: each evaluated user's train (or fit) items, capped at ``cap``, the history
    a query reads (cap <= 0: uncapped); the twin of the history items a served query resolves to."""
    seen = np.diff(task.seen.indptr)
    return np.minimum(seen, cap) if cap > 0 else seen


def activity_buckets(history_items, edges) -> np.ndarray:
    """int [n]: each query's activity bucket from its number of history items (``edges``: the
    bucket starts after bucket 0, e.g. ``ACTIVITY_EDGES``; 0 items: bucket 0, the cold users)."""
    return np.searchsorted(np.asarray(edges), np.asarray(history_items), side="right").astype(np.int64)


def augment_queries(queries: np.ndarray, scale=1.0) -> np.ndarray:
    """[B, D] -> [B, D + 1] with a last column of ``scale`` (a number or one per row; numpy)."""
    queries = np.asarray(queries, np.float32)
    last = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1, 1), (len(queries), 1))
    return np.concatenate([queries, last], axis=1)


def augment_query_tensor(query, scale=None):
    """The serving graph's ``augment_queries``: [B, D] tensor -> [B, D + 1]; ``scale``: [B] or None (ones)."""
    import tensorflow as tf

    last = tf.ones_like(query[:, :1]) if scale is None else tf.cast(scale, query.dtype)[:, None]
    return tf.concat([query, last], axis=1)


def select(evaluate: Callable[[np.ndarray], float], counts: np.ndarray, temperature: float,
           grid=GRID) -> tuple[float, dict]:
    """The ``beta`` of ``grid`` with the best ``evaluate(bias)`` (the validation metric); ties go to
    the smaller beta, so no prior is kept unless it helps. Returns (beta, {beta: value})."""
    values = {float(beta): float(evaluate(item_bias(counts, beta, temperature))) for beta in grid}
    best = max(values, key=lambda b: (values[b], -b))
    return best, values


def describe(beta: float, beta_cold: float | None = None) -> str:
    text = "off" if beta <= 0 else f"beta {beta:g}"
    if beta_cold is not None and beta_cold != beta:
        text += f", cold users {'off' if beta_cold <= 0 else f'beta {beta_cold:g}'}"
    return text


def bucket_name(b: int, edges) -> str:
    """An activity bucket's name: ``0 items``, ``1 item``, ``2-3 items``, ``16+ items`` ..."""
    low = 0 if b == 0 else edges[b - 1]
    high = edges[b] - 1 if b < len(edges) else None
    if high is None:
        return f"{low}+ items"
    return f"{low} item{'s' if low != 1 else ''}" if low == high else f"{low}-{high} items"
