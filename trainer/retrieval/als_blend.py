"""The ALS block of served retrieval scores: ``q . c + bias + w * (u . v)``.

``u`` and ``v`` are the classical baseline's ALS factors (trainer/retrieval/classical.py, the
same fit the run reports as ``"als"``): a user ALS was fit on has a row, any other user (a
cold user, or an id the request sends that train never saw) gets zeros there and keeps the
two-tower score alone. Where ALS is strong (sparse logs, few events per item) the blend lets
its collaborative signal in; where it is not, validation picks ``w = 0``.

``w`` (``trainer.retrieval.als_blend``) is picked on the validation split after the
popularity prior (``select``): ALS fit on the fit split, scored on the same validation
task and weights the prior was picked on. The eval figures and the export use ALS fit on all
of train with that ``w``.

Served as one more block of dimensions, like the prior: candidates ``[c, v, bias]`` against
queries ``[q, w * u, 1]`` (``served_candidates`` / ``served_queries``), so top-k stays one
dot-product search in BruteForce and ScaNN. ``w`` is folded into the stored user factors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

AUTO = -1.0  # trainer.retrieval.als_blend: pick w on validation
GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclasses.dataclass(frozen=True)
class AlsBlock:
    """What the served scores add for ALS, weight folded in.

    Attributes:
        weight: ``w`` (> 0).
        user_ids: str [U], the users ALS has factors for (the train split's users).
        user_factors: float32 [U, f], ``w`` x ALS user factors, row i for ``user_ids[i]``.
        item_factors: float32 [N, f], ALS item factors in catalogue order.
    """

    weight: float
    user_ids: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray

    @classmethod
    def from_fit(cls, fit, weight: float) -> "AlsBlock":
        """From a ``classical.AlsFit`` (its catalogue is the candidates' order)."""
        return cls(float(weight), np.asarray(fit.data.user_ids, dtype=object),
                   (weight * fit.user_factors).astype(np.float32), fit.item_factors.astype(np.float32))

    def query_rows(self, user_ids) -> np.ndarray:
        """float32 [B, f]: the weighted factors of each user id (str or bytes), zeros where ALS has none."""
        import pandas as pd

        ids = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(user_ids).ravel()]
        rows = pd.Index(self.user_ids).get_indexer(ids)
        out = np.zeros((len(ids), self.user_factors.shape[1]), np.float32)
        out[rows >= 0] = self.user_factors[rows[rows >= 0]]
        return out


def served_queries(queries: np.ndarray, block: AlsBlock | None, als_rows: np.ndarray | None) -> np.ndarray:
    """[B, D] model queries -> [B, D + f] with each row's ALS part (``als_rows``: [B, f] weighted
    factors); unchanged without a block."""
    if block is None:
        return np.asarray(queries, np.float32)
    return np.concatenate([np.asarray(queries, np.float32), np.asarray(als_rows, np.float32)], axis=1)


def served_candidates(embeddings: np.ndarray, block: AlsBlock | None) -> np.ndarray:
    """[N, D] model candidates -> [N, D + f] with the ALS item factors; unchanged without a block."""
    if block is None:
        return np.asarray(embeddings, np.float32)
    return np.concatenate([np.asarray(embeddings, np.float32), block.item_factors], axis=1)


def select(evaluate: Callable[[float], float], grid=GRID) -> tuple[float, dict]:
    """The ``w`` of ``grid`` with the best ``evaluate(w)`` (the validation metric); ties go to the
    smaller ``w``, so ALS stays out unless it helps. Returns (w, {w: value})."""
    values = {float(w): float(evaluate(float(w))) for w in grid}
    best = max(values, key=lambda w: (values[w], -w))
    return best, values


def describe(weight: float) -> str:
    return "off" if weight <= 0 else f"w {weight:g}"
