"""The classical retrieval baseline: implicit-feedback ALS, fit on the same train split and
scored on the same ``EvalTask`` as the two-tower model.

The retrieval trainer (trainer/retrieval/train.py) reports it in ``metrics.json`` as
``"als"`` beside ``"model"`` and ``"popularity"``, and the gate (trainer/gate.py,
``min_lift_over_baseline``) refuses a model that loses to it. bench/baselines.py's
``als`` model is this same code. Numpy/scipy and ``implicit``, no TensorFlow.

Conventions (as in bench/baselines.py):

- Every train event is a positive interaction (ratings ignored); repeats collapse to 1
  in the user x item matrix and count for popularity.
- Users with no train interactions ("cold" users, only in a global-time split) have no
  factors: they get the items ranked by train popularity, like the popularity baseline.

Typical use::

    fit = fit_als(train_events, task, ClassicalBaselineConfig())
    metrics = evaluate_scores(task, fit.score)

or, never raising (what the trainer writes): ``baseline_metrics(train_events, task, cfg)``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from trainer import features as F
from trainer.hparams import ClassicalBaselineConfig
from trainer.retrieval.metrics import DEFAULT_KS, EvalTask, ScoreFn, evaluate_and_rank, evaluate_scores


@dataclasses.dataclass(frozen=True)
class TrainData:
    """The train split indexed against the task's catalogue.

    Attributes:
        user_ids: str array [n_train_users], the users with train events, sorted.
        matrix: CSR float32 [n_train_users, num_items], 1 where the user interacted
            with the item in train.
        item_counts: float64 [num_items], train events per item (repeats included).
        task_user_rows: int64 [task.num_users], row in ``matrix`` of each evaluated
            user, -1 for cold users.
        user_rows: int64 [num_train_events], per train event its row in ``matrix``.
        item_cols: int64 [num_train_events], per train event its catalogue index
            (events on items outside the catalogue are dropped first).
    """

    user_ids: np.ndarray
    matrix: sp.csr_matrix
    item_counts: np.ndarray
    task_user_rows: np.ndarray
    user_rows: np.ndarray
    item_cols: np.ndarray

    @property
    def num_cold_users(self) -> int:
        """Evaluated users without train events (scored by popularity)."""
        return int(np.sum(self.task_user_rows < 0))


def index_train(train_events: pd.DataFrame, task: EvalTask) -> TrainData:
    """``train_events`` (``user_id``, ``item_id`` columns) indexed against ``task``'s catalogue."""
    items = pd.Index(task.item_ids)
    cols = items.get_indexer(train_events[F.ITEM_ID].astype(str).to_numpy())
    users_all = train_events[F.USER_ID].astype(str).to_numpy()
    keep = cols >= 0
    cols, users_all = cols[keep].astype(np.int64), users_all[keep]
    user_index = pd.Index(np.unique(users_all))
    rows = user_index.get_indexer(users_all).astype(np.int64)
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(user_index), task.num_items)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return TrainData(
        user_ids=user_index.to_numpy().astype(str),
        matrix=m,
        item_counts=np.bincount(cols, minlength=task.num_items).astype(np.float64),
        task_user_rows=user_index.get_indexer(task.user_ids).astype(np.int64),
        user_rows=rows,
        item_cols=cols,
    )


def dot_product_scores(user_vectors: np.ndarray, item_vectors: np.ndarray, data: TrainData) -> ScoreFn:
    """Score function of a factorization model, popularity for cold users.

    Args:
        user_vectors: [n_train_users, d], row i for ``data.user_ids[i]``.
        item_vectors: [num_items, d], row j for catalogue item j.
        data: from ``index_train``.
    """
    user_vectors = np.asarray(user_vectors, dtype=np.float32)
    item_t = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32).T)  # [d, num_items]
    pop = data.item_counts.astype(np.float32)

    def score(rows: np.ndarray) -> np.ndarray:
        urows = data.task_user_rows[rows]
        known = urows >= 0
        out = np.empty((len(rows), item_t.shape[1]), dtype=np.float32)
        out[known] = user_vectors[urows[known]] @ item_t
        out[~known] = pop
        return out

    return score


MAX_AUTO_FACTORS = 128


def choose_factors(requested: int, num_positives: int, num_users: int, num_items: int) -> int:
    """The factors ALS fits with (``ClassicalBaselineConfig.factors``).

    ``requested`` > 0: that, capped at min(users, items) (the train matrix has no higher
    rank). 0: ``num_positives // (num_users + num_items)``, so that the free parameters
    ((users + items) x factors) are no more than the observed pairs, clipped to
    [1, ``MAX_AUTO_FACTORS``] and to the same rank cap. Always >= 1.
    """
    if requested > 0:
        wanted = requested
    else:
        wanted = min(MAX_AUTO_FACTORS, num_positives // max(1, num_users + num_items))
    return max(1, min(wanted, num_users, num_items))


@dataclasses.dataclass(frozen=True)
class AlsFit:
    """A fitted ALS baseline.

    Attributes:
        score: rows -> [n, task.num_items] scores (``evaluate_scores``'s score function).
        factors: the latent factors used (``choose_factors``).
        train_seconds: the fit's wall time.
        data: the indexed train split (``num_cold_users`` evaluated users get popularity).
        user_factors: float32 [n_train_users, factors], row i for ``data.user_ids[i]``.
        item_factors: float32 [task.num_items, factors], catalogue order.
    """

    score: ScoreFn
    factors: int
    train_seconds: float
    data: TrainData
    user_factors: np.ndarray
    item_factors: np.ndarray

    def task_user_factors(self) -> np.ndarray:
        """float32 [task.num_users, factors]: each evaluated user's factors, zeros for a cold user."""
        rows = self.data.task_user_rows
        out = np.zeros((len(rows), self.user_factors.shape[1]), np.float32)
        out[rows >= 0] = self.user_factors[rows[rows >= 0]]
        return out


def fit_als(train_events: pd.DataFrame, task: EvalTask, cfg: ClassicalBaselineConfig) -> AlsFit:
    """Fits ``implicit``'s CPU ALS on the binary user x item train matrix.

    Factors: ``choose_factors`` (``cfg.factors``, or from the data when it is 0). Confidence of an observed pair ``cfg.alpha``, ``cfg.iterations`` sweeps,
    L2 ``cfg.regularization``, ``random_state=cfg.seed``, ``cfg.threads`` threads (0: every
    core); BLAS (OpenBLAS) is held to one thread meanwhile, as ``implicit`` asks. Scores
    are user_factors @ item_factors.T; cold users get popularity.

    Raises:
        ValueError: no train event falls on a catalogue item (nothing to fit), or the fit
            gave non-finite factors.
    """
    from threadpoolctl import threadpool_limits

    data = index_train(train_events, task)
    n_users, n_items = len(data.user_ids), int(np.count_nonzero(data.item_counts))
    if data.matrix.nnz == 0:
        raise ValueError(f"no train interaction on the {task.num_items} catalogue items: nothing to fit")
    factors = choose_factors(cfg.factors, data.matrix.nnz, n_users, n_items)
    started = time.time()
    with threadpool_limits(limits=1, user_api="blas"):  # implicit wants 1 BLAS thread
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(factors=factors, regularization=cfg.regularization, alpha=cfg.alpha,
                                        iterations=cfg.iterations, random_state=cfg.seed, num_threads=cfg.threads)
        model.fit(data.matrix, show_progress=False)
    seconds = time.time() - started
    user_factors = np.asarray(model.user_factors, np.float32)
    item_factors = np.asarray(model.item_factors, np.float32)
    if not (np.isfinite(user_factors).all() and np.isfinite(item_factors).all()):
        raise ValueError("ALS gave non-finite factors")
    return AlsFit(score=dot_product_scores(user_factors, item_factors, data), factors=factors,
                  train_seconds=seconds, data=data, user_factors=user_factors, item_factors=item_factors)


def baseline_metrics(train_events: pd.DataFrame, task: EvalTask, cfg: ClassicalBaselineConfig,
                     ks: Sequence[int] = DEFAULT_KS) -> dict:
    """The baseline's entry of ``metrics.json``; never raises.

    Fit and evaluated: ``evaluate_scores``'s keys (``recall@K``, ``ndcg@K``, ``hit_rate@K``,
    ``num_users``) plus ``train_seconds``, ``factors``, ``cold_users`` (evaluated users
    scored by popularity) and ``params`` (``cfg``). Otherwise ``{"unavailable": why,
    "disabled": bool}``: disabled by ``cfg.enabled``, or the fit or its evaluation failed
    (any error, e.g. no train rows; the message says which). The gate tells the two apart.
    """
    return baseline_run(train_events, task, cfg, ks)[0]


def baseline_run(train_events: pd.DataFrame, task: EvalTask, cfg: ClassicalBaselineConfig,
                 ks: Sequence[int] = DEFAULT_KS) -> tuple[dict, np.ndarray | None, AlsFit | None]:
    """``baseline_metrics``'s entry, the top-K lists it was evaluated on (``evaluate_and_rank``)
    and the fit itself (both None when unavailable); never raises."""
    params = dataclasses.asdict(cfg)
    if not cfg.enabled:
        return ({"unavailable": "disabled by trainer.baseline.enabled: false", "disabled": True, "params": params},
                None, None)
    try:
        fit = fit_als(train_events, task, cfg)
        metrics, ranked = evaluate_and_rank(task, fit.score, ks=ks)
    except Exception as e:  # noqa: BLE001  the baseline must never stop the trainer
        return {"unavailable": f"{cfg.kind} could not be fit: {type(e).__name__}: {e}", "disabled": False,
                "params": params}, None, None
    return {**metrics, "train_seconds": fit.train_seconds, "factors": fit.factors,
            "cold_users": fit.data.num_cold_users, "params": params}, ranked, fit
