"""Offline top-K retrieval evaluation: the one implementation every model is measured by.

Used by the pipeline's evaluation gate, the benchmarks (``bench/quality.py``) and
all baselines, so their figures are comparable. Pure numpy/scipy, no TensorFlow.

Protocol (user level, full catalogue ranking):

- The evaluated users are those with at least one eval interaction whose item is
  in the catalogue and that they did not already interact with in train.
- A user's ground truth is the *set* of distinct items they interacted with in
  eval (repeats count once), minus the items they interacted with in train (those
  can never be recommended, see the next point, so counting them would only make
  the metric unreachable; for MovieLens, which has no repeats, this removes nothing).
- Items the user interacted with in train are excluded from the ranking (their
  scores are set to -inf). The candidate set is the whole catalogue.
- Per user, with ``hits`` the truth items among the top K:

  * ``recall@K   = |topK ∩ truth| / |truth|`` (the plain definition, *not* capped
    by ``min(K, |truth|)``, so a user with more than K truth items cannot reach 1);
  * ``ndcg@K     = DCG@K / IDCG@K`` with binary relevance,
    ``DCG@K = sum_{r < K, item_r in truth} 1 / log2(r + 2)`` (r is the 0-based rank)
    and the ideal DCG over ``min(K, |truth|)`` relevant items;
  * ``hit_rate@K = 1 if |topK ∩ truth| > 0 else 0``;
  * ``precision@K = |topK ∩ truth| / K`` (divided by K even when fewer than K items
    could be ranked, e.g. a catalogue smaller than K);
  * ``f1@K = 2 P R / (P + R)`` of the user's precision@K and recall@K (0 when both are 0);
  * ``mrr@K = 1 / (1 + r)`` of the 0-based rank r of the first truth item in the top K
    (0 when there is none).

  Each metric is the unweighted mean over evaluated users (``per_user_metrics`` gives
  the per-user values, which trainer/retrieval/slices.py averages over user groups).

Beyond-accuracy metrics (coverage, novelty, diversity, popularity bias) and slices are
computed from the same ranked lists (``rank_scores``) by trainer/retrieval/beyond_accuracy.py
and trainer/retrieval/slices.py.

Score ties are broken arbitrarily (``np.argpartition``) but deterministically: a
user's result does not depend on the batch it is scored in.

Typical use::

    task = build_eval_task(train_events, eval_events, item_ids)
    metrics = evaluate_scores(task, lambda rows: model_scores(task.user_ids[rows]))
    metrics["recall@100"]
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

DEFAULT_KS = (10, 50, 100)
METRIC_NAMES = ("recall", "ndcg", "hit_rate", "precision", "f1", "mrr")

# rows (int64 [n]) -> scores (float [n, num_items]); see ``evaluate_scores``.
ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """Everything needed to evaluate any model on one train/eval split.

    Row ``r`` of every per-user array refers to the evaluated user ``user_ids[r]``;
    column ``j`` of every per-item matrix refers to the catalogue item ``item_ids[j]``.

    Attributes:
        user_ids: str array [n_users], the evaluated users (>= 1 truth item each),
            sorted.
        item_ids: str array [num_items], the candidate catalogue, in the caller's order.
        truth: CSR bool matrix [n_users, num_items]; ``truth[r, j]`` iff item j is in
            user r's ground truth (eval items not seen in train).
        seen: CSR bool matrix [n_users, num_items]; ``seen[r, j]`` iff user r
            interacted with item j in train (excluded from the ranking).
        num_dropped_eval_events: eval events ignored because their item is not in
            the catalogue.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    truth: sp.csr_matrix
    seen: sp.csr_matrix
    num_dropped_eval_events: int = 0

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def item_index(self) -> dict[str, int]:
        """Item id -> column index in the catalogue."""
        return {str(i): j for j, i in enumerate(self.item_ids)}

    def subset(self, rows: np.ndarray) -> "EvalTask":
        """The same task restricted to the evaluated users ``user_ids[rows]`` (rows sorted)."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        return dataclasses.replace(
            self, user_ids=self.user_ids[rows], truth=self.truth[rows], seen=self.seen[rows]
        )


def _interaction_matrix(
    users: np.ndarray, items: np.ndarray, user_index: pd.Index, item_index: pd.Index
) -> sp.csr_matrix:
    rows = user_index.get_indexer(users)
    cols = item_index.get_indexer(items)
    keep = (rows >= 0) & (cols >= 0)
    data = np.ones(int(keep.sum()), dtype=bool)
    m = sp.csr_matrix(
        (data, (rows[keep], cols[keep])), shape=(len(user_index), len(item_index)), dtype=bool
    )
    m.sum_duplicates()  # bool addition: duplicates collapse to True
    m.sort_indices()
    return m


def build_eval_task(
    train_events: pd.DataFrame,
    eval_events: pd.DataFrame,
    item_ids: Sequence[str],
    user_col: str = "user_id",
    item_col: str = "item_id",
) -> EvalTask:
    """Builds the evaluation task of one split.

    Args:
        train_events: DataFrame with ``user_col`` and ``item_col`` (str); the train
            split. Its (user, item) pairs are the seen items to exclude.
        eval_events: same columns; the eval split, whose distinct (user, item) pairs
            are the ground truth.
        item_ids: the candidate catalogue, [num_items] unique ids (e.g.
            ``tfx_pipeline.data.tables.catalogue(events, items)``). Eval events on items
            outside it are dropped and counted in ``num_dropped_eval_events``.
        user_col: user id column name.
        item_col: item id column name.

    Returns:
        An ``EvalTask`` whose users are those with >= 1 ground-truth item.

    Raises:
        ValueError: if ``item_ids`` has duplicates.
    """
    item_index = pd.Index(np.asarray([str(i) for i in item_ids], dtype=object))
    if not item_index.is_unique:
        raise ValueError("item_ids must be unique")
    ev_users = eval_events[user_col].astype(str).to_numpy()
    ev_items = eval_events[item_col].astype(str).to_numpy()
    in_catalogue = item_index.get_indexer(ev_items) >= 0
    candidate_users = pd.Index(np.unique(ev_users[in_catalogue]))

    seen = _interaction_matrix(
        train_events[user_col].astype(str).to_numpy(),
        train_events[item_col].astype(str).to_numpy(),
        candidate_users,
        item_index,
    )
    truth = _interaction_matrix(ev_users, ev_items, candidate_users, item_index)
    truth = (truth > seen).tocsr()  # bool: truth AND NOT seen
    truth.eliminate_zeros()
    truth.sort_indices()
    keep = np.flatnonzero(np.diff(truth.indptr) > 0)
    return EvalTask(
        user_ids=candidate_users.to_numpy().astype(str)[keep],
        item_ids=item_index.to_numpy().astype(str),
        truth=truth[keep],
        seen=seen[keep],
        num_dropped_eval_events=int((~in_catalogue).sum()),
    )


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def per_user_metrics(topk: np.ndarray, truth: sp.csr_matrix, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Every ``METRIC_NAMES`` metric at every K, per user (see the module docstring).

    Args:
        topk: int array [n, L], catalogue indices ranked best first; -1 pads (never a
            hit). L may be smaller than max(ks).
        truth: CSR bool [n, num_items], each row with >= 1 truth item.
        ks: cut-offs K (positive).

    Returns:
        ``{"recall@K": float64 [n], ...}``.
    """
    ks = _check_ks(ks)
    max_k = max(ks)
    topk = np.asarray(topk)[:, :max_k]
    n, width = topk.shape
    num_items = truth.shape[1]
    # Membership test on flat keys row * num_items + item.
    truth_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(truth.indptr))
    truth_keys = truth_rows * num_items + truth.indices.astype(np.int64)
    valid = topk >= 0
    keys = np.arange(n, dtype=np.int64)[:, None] * num_items + np.where(valid, topk, 0)
    hits = np.isin(keys, truth_keys) & valid  # [n, L]
    n_truth = np.diff(truth.indptr).astype(np.float64)  # [n], all > 0
    discounts = 1.0 / np.log2(np.arange(max_k, dtype=np.float64) + 2.0)  # [max_k]
    ideal_cum = np.cumsum(discounts)  # ideal DCG with i relevant items: ideal_cum[i - 1]
    gains = hits * discounts[:width]
    hit_cum = np.cumsum(hits, axis=1)
    dcg_cum = np.cumsum(gains, axis=1)
    # 0-based rank of the first hit (width when none).
    first_hit = np.where(hits.any(axis=1), np.argmax(hits, axis=1), width) if width else np.zeros(n, np.int64)
    out = {}
    for k in ks:
        kk = min(k, width)
        n_hits = hit_cum[:, kk - 1] if kk > 0 else np.zeros(n)
        dcg = dcg_cum[:, kk - 1] if kk > 0 else np.zeros(n)
        idcg = ideal_cum[np.minimum(k, n_truth).astype(np.int64) - 1]
        recall = n_hits / n_truth
        precision = n_hits / float(k)
        denom = precision + recall
        out[f"recall@{k}"] = recall
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"hit_rate@{k}"] = (n_hits > 0).astype(np.float64)
        out[f"precision@{k}"] = precision
        out[f"f1@{k}"] = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
        out[f"mrr@{k}"] = np.where(first_hit < kk, 1.0 / (first_hit + 1.0), 0.0)
    return out


class _Accumulator:
    """Sums per-user metrics over batches; ``result()`` averages them."""

    def __init__(self, ks: tuple[int, ...]):
        self.ks = ks
        self.n = 0
        self.sums = {f"{m}@{k}": 0.0 for k in ks for m in METRIC_NAMES}

    def add(self, topk: np.ndarray, truth: sp.csr_matrix) -> None:
        """Adds a batch (``per_user_metrics``'s arguments)."""
        if topk.shape[0] == 0:
            return
        for name, values in per_user_metrics(topk, truth, self.ks).items():
            self.sums[name] += float(np.sum(values))
        self.n += topk.shape[0]

    def result(self) -> dict[str, float]:
        out = {name: (s / self.n if self.n else 0.0) for name, s in self.sums.items()}
        out["num_users"] = float(self.n)
        return out


def _batches(num_users: int, batch_size: int) -> Iterable[np.ndarray]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, num_users, batch_size):
        yield np.arange(start, min(start + batch_size, num_users), dtype=np.int64)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the ``k`` largest scores, best first.

    Args:
        scores: float array [n, num_items].
        k: how many; clipped to num_items.

    Returns:
        int64 array [n, min(k, num_items)].
    """
    n, num_items = scores.shape
    k = min(k, num_items)
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64)
    if k < num_items:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(num_items), (n, num_items))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def _ranked_batches(task: EvalTask, score_fn: ScoreFn, k: int,
                    batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(rows, top-k catalogue indices [len(rows), min(k, num_items)]) per batch, seen items masked.

    Seen items can only appear in a list when fewer than k unseen items exist; they are
    replaced by -1 (never a hit, and not counted as recommended by the list metrics).
    """
    for rows in _batches(task.num_users, batch_size):
        scores = np.asarray(score_fn(rows))
        if scores.shape != (len(rows), task.num_items):
            raise ValueError(
                f"score_fn returned shape {scores.shape}; expected ({len(rows)}, {task.num_items})"
            )
        if not np.issubdtype(scores.dtype, np.floating):
            scores = scores.astype(np.float64)
        elif not scores.flags.writeable:
            scores = scores.copy()
        if np.isnan(scores).any():
            raise ValueError("score_fn returned NaN scores")
        seen = task.seen[rows]
        seen_rows = np.repeat(np.arange(len(rows)), np.diff(seen.indptr))
        scores[seen_rows, seen.indices] = -np.inf
        topk = top_k_indices(scores, k)
        if topk.shape[1] and len(seen.indices):
            seen_keys = seen_rows.astype(np.int64) * task.num_items + seen.indices.astype(np.int64)
            keys = np.arange(len(rows), dtype=np.int64)[:, None] * task.num_items + topk
            topk = np.where(np.isin(keys, seen_keys), -1, topk)
        yield rows, topk


def evaluate_scores(
    task: EvalTask,
    score_fn: ScoreFn,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 256,
) -> dict[str, float]:
    """Evaluates a model that scores every catalogue item for a batch of users.

    Users are scored ``batch_size`` at a time, so the peak memory is about
    ``batch_size * num_items`` scores (e.g. 256 x 1M float32 = 1 GiB: lower
    ``batch_size`` for large catalogues).

    Args:
        task: from ``build_eval_task``.
        score_fn: called with ``rows``, an int64 array [n] (n <= batch_size) of row
            indices into ``task.user_ids`` (the users are ``task.user_ids[rows]``);
            returns a float array [n, task.num_items], higher is better, column j for
            ``task.item_ids[j]``. NaN is an error. The array may be modified in place
            (a read-only array, e.g. from ``np.broadcast_to``, is copied first).
        ks: cut-offs K; the metrics are computed for each.
        batch_size: users per ``score_fn`` call.

    Returns:
        ``"{metric}@K"`` for every ``METRIC_NAMES`` metric and K, each the mean over the
        evaluated users, plus ``"num_users"`` (as a float).

    Raises:
        ValueError: on a wrongly shaped score array or NaN scores.
    """
    return evaluate_and_rank(task, score_fn, ks, batch_size)[0]


def evaluate_and_rank(
    task: EvalTask,
    score_fn: ScoreFn,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 256,
) -> tuple[dict[str, float], np.ndarray]:
    """``evaluate_scores``, and the ranked lists it evaluated.

    Returns:
        (``evaluate_scores``'s metrics, int64 [task.num_users, min(max(ks), num_items)]
        top-K catalogue indices per user, best first, seen items masked, -1 where fewer
        than that many unseen items exist). The lists are what
        trainer/retrieval/beyond_accuracy.py and slices.py take, so nothing is scored twice.
    """
    ks = _check_ks(ks)
    acc = _Accumulator(ks)
    parts = []
    for rows, topk in _ranked_batches(task, score_fn, max(ks), batch_size):
        acc.add(topk, task.truth[rows])
        parts.append(topk)
    width = min(max(ks), task.num_items)
    ranked = np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.int64)
    return acc.result(), ranked


def evaluate_topk(
    task: EvalTask,
    topk_item_indices: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    filter_seen: bool = True,
    batch_size: int = 4096,
) -> dict[str, float]:
    """Evaluates a model that returns ranked top-k lists instead of full scores.

    Args:
        task: from ``build_eval_task``.
        topk_item_indices: int array [task.num_users, L], row r for
            ``task.user_ids[r]``: catalogue indices (into ``task.item_ids``) ranked
            best first; -1 marks an empty slot. Repeated items in a row are the
            caller's error (each would count as a hit).
        ks: cut-offs K. A K larger than the number of valid entries left in a row
            simply sees fewer candidates.
        filter_seen: if True, items the user interacted with in train are removed
            from each list and the rest move up, as ``evaluate_scores`` would rank
            them; so a model that cannot mask seen items should return
            ``max(ks)`` + (the user's number of seen items) candidates. If False,
            seen items stay in place (and are never hits).
        batch_size: rows processed at a time.

    Returns:
        Same keys as ``evaluate_scores``.

    Raises:
        ValueError: on a wrongly shaped array or indices outside [-1, num_items).
    """
    ks = _check_ks(ks)
    topk = np.asarray(topk_item_indices)
    if topk.ndim != 2 or topk.shape[0] != task.num_users:
        raise ValueError(f"topk_item_indices has shape {topk.shape}; expected ({task.num_users}, L)")
    if not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"topk_item_indices must be integers, got {topk.dtype}")
    if topk.size and (topk.min() < -1 or topk.max() >= task.num_items):
        raise ValueError(f"topk_item_indices must be in [-1, {task.num_items})")
    topk = topk.astype(np.int64)
    acc = _Accumulator(ks)
    for rows in _batches(task.num_users, batch_size):
        batch = topk[rows]
        if filter_seen and batch.shape[1]:
            seen = task.seen[rows]
            seen_rows = np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(seen.indptr))
            seen_keys = seen_rows * task.num_items + seen.indices.astype(np.int64)
            keys = np.arange(len(rows), dtype=np.int64)[:, None] * task.num_items + np.maximum(batch, 0)
            drop = (batch < 0) | np.isin(keys, seen_keys)
            order = np.argsort(drop, axis=1, kind="stable")  # kept entries first, in rank order
            batch = np.where(np.take_along_axis(drop, order, axis=1), -1, np.take_along_axis(batch, order, axis=1))
        acc.add(batch, task.truth[rows])
    return acc.result()
