"""Beyond-accuracy metrics of ranked top-K lists: coverage, novelty, diversity, popularity bias.

Computed from the lists ``metrics.evaluate_and_rank`` returns (nothing is scored again),
per user where the metric is a property of one list, so trainer/retrieval/slices.py can
average them over any user group. Pure numpy, vectorised over users in batches.

Definitions (``R_u``: the valid entries of user u's top K, -1 pads and masked seen items
left out; ``c_i``: item i's train interaction count; ``N = sum_i c_i`` over the catalogue;
``|I|``: the catalogue size). Every per-user value is averaged over the evaluated users
whose list has the entries it needs:

- ``coverage@K``: ``|union_u R_u| / |I|``, the share of the catalogue recommended to at
  least one evaluated user (a set metric: not a mean over users).
- ``novelty@K``: mean over ``R_u`` of the self-information ``-log2 p(i)``, with
  ``p(i) = (c_i + 1) / (N + |I|)`` (add-one smoothing, so an item never seen in train
  has the finite, largest self-information ``log2(N + |I|)`` instead of infinity).
- ``diversity_embedding@K``: intra-list diversity, the mean over the pairs of ``R_u`` of
  the cosine distance ``1 - cos(e_i, e_j)`` of the items' embeddings (for every model
  the same embeddings, ours, so the lists are compared in one space; a zero vector has
  cosine 0 with everything). Needs >= 2 entries.
- ``diversity_feature@K``: the same on a categorical or multi-valued item feature, the
  distance being the Jaccard distance ``1 - |A ∩ B| / |A ∪ B|`` of the two items'
  value sets (for a single-valued feature: 1 if the values differ, else 0; two items
  without a value are at distance 0).
- ``mean_popularity@K``: mean ``c_i`` over ``R_u``; ``truth_popularity``: the same over the
  user's truth items; ``popularity_ratio@K``: mean_popularity@K / truth_popularity (a
  ratio of the two means over users; > 1: the lists favour popular items more than
  what users went on to consume).
- ``tail_share@K``: share of ``R_u`` in the tail bucket (``popularity_buckets``); the
  ``{head,torso,tail}_share@K`` trio is the retrieved-item popularity distribution, and
  ``truth_{head,torso,tail}_share`` the truth's (each a mean over users of per-user shares).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

BUCKETS = ("head", "torso", "tail")
HEAD, TORSO, TAIL = range(3)


def popularity_buckets(counts: np.ndarray, head_share: float = 0.5, tail_share: float = 0.8) -> np.ndarray:
    """Each item's popularity bucket (0 head, 1 torso, 2 tail) from its train interaction count.

    Items are ranked by count, most popular first (ties in catalogue order). With
    ``before_i`` the interactions of the items ranked before i, i is in the head if
    ``before_i < head_share * N``, the torso if ``before_i < tail_share * N``, else the
    tail: the head is the fewest top items that make ``head_share`` of the train
    interactions, head + torso the fewest that make ``tail_share``. Items with no train
    interaction are always in the tail (so is every item when N = 0).

    Args:
        counts: [num_items] non-negative train interaction counts.
        head_share, tail_share: 0 < head_share < tail_share < 1.

    Returns:
        int8 [num_items].
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not 0.0 < head_share < tail_share < 1.0:
        raise ValueError(f"need 0 < head_share < tail_share < 1, got {head_share}, {tail_share}")
    if (counts < 0).any():
        raise ValueError("item counts must be >= 0")
    total = counts.sum()
    order = np.argsort(-counts, kind="stable")
    before = np.empty_like(counts)
    before[order] = np.cumsum(counts[order]) - counts[order]
    buckets = np.full(len(counts), TAIL, dtype=np.int8)
    if total > 0:
        buckets[before < tail_share * total] = TORSO
        buckets[before < head_share * total] = HEAD
        buckets[counts == 0] = TAIL
    return buckets


def self_information(counts: np.ndarray) -> np.ndarray:
    """``-log2((c_i + 1) / (N + |I|))`` per item (add-one smoothed, see the module docstring)."""
    counts = np.asarray(counts, dtype=np.float64)
    return -np.log2((counts + 1.0) / (counts.sum() + len(counts)))


def feature_sets(values: Sequence) -> sp.csr_matrix:
    """Item feature values -> a multi-hot CSR [num_items, num_values] for ``diversity_feature``.

    Args:
        values: one entry per catalogue item: a string (single-valued; "" = no value) or
            an iterable of strings (multi-valued; empty = no value).
    """
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for r, v in enumerate(values):
        vals = [v] if isinstance(v, (str, bytes)) else list(v)
        for x in {x.decode() if isinstance(x, bytes) else str(x) for x in vals}:
            if x:
                rows.append(r)
                cols.append(vocab.setdefault(x, len(vocab)))
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(values), max(len(vocab), 1)))


@dataclasses.dataclass(frozen=True)
class ItemContext:
    """Per-item facts the list metrics read, all indexed by catalogue column.

    Attributes:
        counts: float64 [num_items], train interaction counts.
        buckets: int8 [num_items], from ``popularity_buckets``.
        embeddings: float [num_items, D] or None (no embedding diversity).
        features: multi-hot CSR [num_items, V] from ``feature_sets``, or None.
    """

    counts: np.ndarray
    buckets: np.ndarray
    embeddings: np.ndarray | None = None
    features: sp.csr_matrix | None = None

    @property
    def num_items(self) -> int:
        return len(self.counts)


def _pair_mean(dist: np.ndarray, valid: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per list, the mean of ``dist`` [n, L, L] over the valid pairs i < j among its first k; NaN if none."""
    n, width = valid.shape
    pair = valid[:, :, None] & valid[:, None, :] & np.triu(np.ones((width, width), bool), 1)[None]
    weighted = np.where(pair, dist, 0.0)
    out = {}
    for k in ks:
        kk = min(k, width)
        num = weighted[:, :kk, :kk].sum(axis=(1, 2), dtype=np.float64)
        den = pair[:, :kk, :kk].sum(axis=(1, 2))
        out[k] = np.divide(num, den, out=np.full(n, np.nan), where=den > 0)
    return out


def _batches(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def list_means(topk: np.ndarray, per_item: np.ndarray, k: int) -> np.ndarray:
    """Per list, the mean of ``per_item`` over its first ``k`` entries (-1 entries left out;
    a K above L sees the L entries); NaN for a list without one. float64 [n]."""
    topk = np.asarray(topk, dtype=np.int64)[:, :k]
    valid = topk >= 0
    n_valid = valid.sum(axis=1).astype(np.float64)
    total = np.where(valid, np.asarray(per_item)[np.where(valid, topk, 0)], 0.0).sum(axis=1)
    return np.divide(total, n_valid, out=np.full(len(topk), np.nan), where=n_valid > 0)


def truth_means(truth: sp.csr_matrix, per_item: np.ndarray) -> np.ndarray:
    """Per user, the mean of ``per_item`` over their truth items; NaN for a row without one. float64 [n]."""
    truth = sp.csr_matrix(truth)
    sizes = np.diff(truth.indptr)
    rows = np.repeat(np.arange(truth.shape[0]), sizes)
    total = np.bincount(rows, weights=np.asarray(per_item, dtype=np.float64)[truth.indices],
                        minlength=truth.shape[0])
    return np.divide(total, sizes.astype(np.float64), out=np.full(truth.shape[0], np.nan), where=sizes > 0)


def per_user_list_metrics(topk: np.ndarray, items: ItemContext, ks: Sequence[int],
                          batch_size: int = 256) -> dict[str, np.ndarray]:
    """The per-user beyond-accuracy values of each list (module docstring), at every K.

    Args:
        topk: int [n, L] catalogue indices, best first; -1 = empty.
        items: the catalogue's counts, buckets, embeddings and feature sets.
        ks: cut-offs; a K above L sees the L entries.
        batch_size: users per batch of the pairwise diversities (memory ~ batch x L^2).

    Returns:
        ``{"novelty@K", "mean_popularity@K", "{head,torso,tail}_share@K",
        "diversity_embedding@K" (if embeddings), "diversity_feature@K" (if features)}``,
        float64 [n] each, NaN for a list without the entries the metric needs.
    """
    topk = np.asarray(topk, dtype=np.int64)
    n = topk.shape[0]
    valid = topk >= 0
    safe = np.where(valid, topk, 0)
    info = self_information(items.counts)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"novelty@{k}"] = list_means(topk, info, k)
        out[f"mean_popularity@{k}"] = list_means(topk, items.counts.astype(np.float64), k)
        for b, name in enumerate(BUCKETS):
            out[f"{name}_share@{k}"] = list_means(topk, (items.buckets == b).astype(np.float64), k)
    if items.embeddings is not None:
        emb = np.asarray(items.embeddings, dtype=np.float32)  # float32: half the memory traffic of the pairs
        if emb.shape[0] != items.num_items:
            raise ValueError(f"embeddings have {emb.shape[0]} rows for {items.num_items} catalogue items")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
        parts = {k: [] for k in ks}
        for s in _batches(n, batch_size):
            e = unit[safe[s]]  # [b, L, D]
            cos = np.matmul(e, e.transpose(0, 2, 1))  # batched BLAS; np.einsum here is ~10x slower
            for k, v in _pair_mean(1.0 - cos, valid[s], ks).items():
                parts[k].append(v)
        for k in ks:
            out[f"diversity_embedding@{k}"] = np.concatenate(parts[k]) if n else np.zeros(0)
    if items.features is not None:
        feats = sp.csr_matrix(items.features, dtype=np.float32)
        if feats.shape[0] != items.num_items:
            raise ValueError(f"feature sets have {feats.shape[0]} rows for {items.num_items} catalogue items")
        dense = feats.toarray()  # [num_items, V]: a few values per item (genres: 18)
        sizes = dense.sum(axis=1)
        parts = {k: [] for k in ks}
        for s in _batches(n, batch_size):
            m = dense[safe[s]]  # [b, L, V]
            inter = np.matmul(m, m.transpose(0, 2, 1))
            size = sizes[safe[s]]
            union = size[:, :, None] + size[:, None, :] - inter
            jaccard = 1.0 - np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
            for k, v in _pair_mean(jaccard, valid[s], ks).items():
                parts[k].append(v)
        for k in ks:
            out[f"diversity_feature@{k}"] = np.concatenate(parts[k]) if n else np.zeros(0)
    return out


def per_user_truth_metrics(truth: sp.csr_matrix, items: ItemContext) -> dict[str, np.ndarray]:
    """``truth_popularity`` and ``truth_{head,torso,tail}_share`` per user (rows with >= 1 truth item)."""
    out = {"truth_popularity": truth_means(truth, items.counts.astype(np.float64))}
    for b, name in enumerate(BUCKETS):
        out[f"truth_{name}_share"] = truth_means(truth, (items.buckets == b).astype(np.float64))
    return out


def coverage(topk: np.ndarray, num_items: int, ks: Sequence[int]) -> dict[str, float]:
    """``coverage@K``: share of the ``num_items`` catalogue in at least one list's first K entries."""
    topk = np.asarray(topk)
    out = {}
    for k in ks:
        head = topk[:, :k]
        out[f"coverage@{k}"] = float(len(np.unique(head[head >= 0]))) / num_items if num_items else 0.0
    return out


def summarize(user_values: dict[str, np.ndarray], truth_values: dict[str, np.ndarray], topk: np.ndarray,
              num_items: int, ks: Sequence[int]) -> dict[str, float | None]:
    """The beyond-accuracy entry of one model over a set of users (rows of all three inputs).

    Means over users (NaNs left out; None when every user is NaN), ``coverage@K``, and
    ``popularity_ratio@K`` = mean_popularity@K / mean truth_popularity.
    """
    def mean(values: np.ndarray) -> float | None:
        finite = values[~np.isnan(values)]
        return float(finite.mean()) if len(finite) else None

    out: dict[str, float | None] = {name: mean(v) for name, v in user_values.items()}
    out.update(coverage(topk, num_items, ks))
    truth_pop = mean(truth_values["truth_popularity"])
    for k in ks:
        rec = out.get(f"mean_popularity@{k}")
        out[f"popularity_ratio@{k}"] = rec / truth_pop if rec is not None and truth_pop else None
    return out
