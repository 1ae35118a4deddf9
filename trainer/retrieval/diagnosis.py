"""Diagnosis of the retrieval model: metrics.json ``"diagnosis"`` and the report's "Diagnosis" section.

Three views, all from what ``RetrievalRecipe.evaluate`` already has (one eval task, the ranked
lists of trainer/retrieval/metrics.py ``evaluate_and_rank``, the train interaction counts):

- ``"norms"``: the candidate embeddings' norm against the item's train popularity. The
  towers L2-normalise their output (trainer/retrieval/towers.py), so every served embedding
  has norm 1 and the scores are cosines; the norm measured is the pre-normalisation vector's
  (the candidate MLP's output, ``Tower.unnormalized``; ``"measured"`` says which). The scores
  never see it: a correlation says what the MLP learned, not a bias of the served scores.
  Spearman's rho of norm vs count over every catalogue item (average ranks for ties, so the
  items never seen in train tie at the bottom) and the mean norm per popularity bucket
  (head / torso / tail: beyond_accuracy.popularity_buckets, as the beyond-accuracy metrics
  and slices use) and per popularity decile.
- ``"retrieved_popularity"``: how the top-K items (K = ``report_k``) of every ranked model,
  and the eval truth items, spread over the catalogue's popularity deciles. Decile d holds
  the d-th tenth of the catalogue's items ranked by train count, most popular first (ties in
  catalogue order, as popularity_buckets breaks them; so equal counts may straddle two
  deciles: each decile's count range is given). A share is the mean over users of the share
  of their list (or truth) in the decile, as the bucket shares of beyond_accuracy.py are (the
  three bucket shares are not repeated here: metrics.json "beyond_accuracy" has them).
- ``"importance"``: permutation importance of the query's input groups (user id, each user
  side feature, history, context: hour, weekday and recency together) on a seeded sample of
  ``trainer.evaluation.importance_users`` evaluated users (all when fewer): each group's raw
  inputs are shuffled across the sampled users (one permutation per group, every input of the
  group moved together), the sample re-embedded by the query tower (one pass per group) and
  ranked against the same candidates with the same exclusions; the drop is the sample's
  unshuffled Recall@K minus the shuffled one, for K = 100 and the report K. A drop near 0: the
  model does not use that input (or it carries nothing the others do not); negative: noise.

Pure numpy but for the ``embed`` callable ``permutation_importance`` is given.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

from trainer import features as F
from trainer.retrieval import beyond_accuracy as ba
from trainer.retrieval.metrics import EvalTask, evaluate_scores
from trainer.training_logs import log

NUM_DECILES = 10
CONTEXT_KEYS = (F.HOUR_OF_DAY, F.DAY_OF_WEEK, F.HOURS_SINCE_PREV_EVENT)
PRE_NORMALISATION = "pre_normalisation"  # Tower.unnormalized: the MLP output before the L2 normalisation
OUTPUT = "output"  # the tower's output (no pre-normalisation vector reachable)
IMPORTANCE_KS = (100,)  # besides the report K


# -- norms vs popularity --------------------------------------------------------

def candidate_norms(tower, inputs: dict) -> tuple[np.ndarray, str]:
    """Per item, the norm of the candidate tower's pre-normalisation vector (``Tower.unnormalized``)
    and ``PRE_NORMALISATION``; a tower without one: the norm of its output and ``OUTPUT``."""
    pre = getattr(tower, "unnormalized", None)
    vectors = pre(inputs, training=False) if pre is not None else tower(inputs, training=False)
    return np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1), PRE_NORMALISATION if pre else OUTPUT


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho: the Pearson correlation of the average ranks; None with fewer than two
    points or a constant input (no ranking to correlate)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-d arrays of one length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return None
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def popularity_deciles(counts: np.ndarray) -> np.ndarray:
    """Each item's popularity decile, 0 (the most popular tenth of the items) to 9: items ranked
    by count, most popular first, ties in catalogue order; rank r of n is in decile ``10 r // n``
    (with fewer than 10 items some deciles are empty). int8 [num_items]."""
    counts = np.asarray(counts, dtype=np.float64)
    n = len(counts)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(n)
    return (rank * NUM_DECILES // max(n, 1)).astype(np.int8)


def group_means(values: np.ndarray, labels: np.ndarray, num_groups: int) -> list[float | None]:
    """Mean of ``values`` per label 0..num_groups-1 (None for an empty group)."""
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    sums = np.bincount(labels, weights=values, minlength=num_groups)
    sizes = np.bincount(labels, minlength=num_groups)
    return [float(s / c) if c else None for s, c in zip(sums, sizes)]


def norm_summary(norms: np.ndarray, counts: np.ndarray, buckets: np.ndarray, deciles: np.ndarray,
                 measured: str) -> dict:
    """``"norms"`` of the diagnosis (module docstring) from per-item norms and train counts."""
    norms = np.asarray(norms, dtype=np.float64)
    if norms.shape != np.shape(counts):
        raise ValueError(f"{norms.shape[0]} norms for {len(counts)} catalogue items")
    by_bucket = group_means(norms, buckets, len(ba.BUCKETS))
    return {
        "measured": measured,
        "spearman_norm_vs_count": spearman(norms, counts),
        "mean_norm": float(norms.mean()) if len(norms) else None,
        "buckets": {name: {"items": int((np.asarray(buckets) == b).sum()), "mean_norm": by_bucket[b]}
                    for b, name in enumerate(ba.BUCKETS)},
        "decile_mean_norm": group_means(norms, deciles, NUM_DECILES),
    }


# -- popularity of what is retrieved --------------------------------------------

def _shares(per_user_mean, labels: np.ndarray, num_groups: int) -> list[float] | None:
    """Mean over the users that have an entry of the share of their entries in each label group
    (``per_user_mean``: per-item values -> per-user means, NaN for a user without entries)."""
    labels = np.asarray(labels, dtype=np.int64)
    per_group = [per_user_mean((labels == g).astype(np.float64)) for g in range(num_groups)]
    keep = ~np.isnan(per_group[0]) if num_groups else np.zeros(0, bool)
    if not keep.any():
        return None
    return [float(v[keep].mean()) for v in per_group]


def list_shares(topk: np.ndarray, labels: np.ndarray, num_groups: int, k: int) -> list[float] | None:
    """Mean over the lists with >= 1 valid entry among their first ``k`` of the share of those
    entries whose item has each label (-1 entries left out); None when no list has one.
    The per-list means are beyond_accuracy's (``list_means``), as its bucket shares are."""
    return _shares(lambda per_item: ba.list_means(topk, per_item, k), labels, num_groups)


def truth_shares(truth: sp.csr_matrix, labels: np.ndarray, num_groups: int) -> list[float] | None:
    """``list_shares`` of the users' truth items (every row with >= 1 truth item; ``ba.truth_means``)."""
    return _shares(lambda per_item: ba.truth_means(truth, per_item), labels, num_groups)


def decile_table(counts: np.ndarray, deciles: np.ndarray) -> list[dict]:
    """Per decile: its items, their train count range and their share of the train interactions."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    out = []
    for d in range(NUM_DECILES):
        c = counts[deciles == d]
        out.append({"decile": d + 1, "items": int(len(c)),
                    "min_count": float(c.min()) if len(c) else None, "max_count": float(c.max()) if len(c) else None,
                    "interaction_share": float(c.sum() / total) if total > 0 else 0.0})
    return out


def retrieved_popularity(ranked: Mapping[str, np.ndarray], truth: sp.csr_matrix, counts: np.ndarray,
                         deciles: np.ndarray, k: int) -> dict:
    """``"retrieved_popularity"`` of the diagnosis: decile shares of every model's top ``k`` and of the truth."""
    shares = {name: list_shares(topk, deciles, NUM_DECILES, k) for name, topk in ranked.items()}
    shares["truth"] = truth_shares(truth, deciles, NUM_DECILES)
    return {"k": int(k), "deciles": decile_table(counts, deciles), "shares": shares}


# -- permutation importance -----------------------------------------------------

def query_groups(query_keys: Sequence[str], user_features: Sequence[str]) -> dict[str, list[str]]:
    """The query's input groups: user id, each user side feature, history, context (those present)."""
    keys = set(query_keys)
    groups = {"user_id": [F.USER_ID]}
    groups.update({key: [key] for key in sorted(user_features)})
    groups["history"] = [F.HISTORY_ITEM_IDS]
    groups["context"] = list(CONTEXT_KEYS)
    return {name: [k for k in ks if k in keys] for name, ks in groups.items() if any(k in keys for k in ks)}


def sample_rows(num_users: int, max_users: int, seed: int) -> np.ndarray:
    """Sorted rows of a seeded uniform sample of ``max_users`` of ``num_users`` (all of them when fewer)."""
    if num_users <= max_users:
        return np.arange(num_users, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(num_users, size=max_users, replace=False)).astype(np.int64)


def permutation_importance(task: EvalTask, query: Mapping[str, np.ndarray], embed: Callable[[dict], np.ndarray],
                           candidates: np.ndarray, groups: Mapping[str, Sequence[str]], ks: Sequence[int],
                           max_users: int = 2000, seed: int = 0) -> dict:
    """Recall@K drop per query input group when it is shuffled across a sample of the evaluated users.

    Args:
        task: the eval task; row r of every ``query`` column is ``task.user_ids[r]``'s query.
        query: raw query column name -> [num_users, ...] numpy array.
        embed: a dict of raw query columns (the sample's rows) -> query embeddings [n, D].
        candidates: [num_items, D] candidate embeddings (scores: query @ candidates.T).
        groups: group name -> the query columns it shuffles together (``query_groups``).
        ks: the Recall cut-offs, in the order the result lists them.
        max_users, seed: ``sample_rows``'s.

    Returns:
        ``{"groups": {group: {"recall@K_drop": base - shuffled}}, "sample": {"users",
        "eval_users", "max_users", "seed", "selection", "recall@K" (the unshuffled sample's),
        "seconds"}}``; no groups when no user is evaluated.
    """
    start = time.perf_counter()
    ks = tuple(dict.fromkeys(int(k) for k in ks))  # in the caller's order (the report's columns), once each
    rows = sample_rows(task.num_users, max_users, seed)
    sample = {"users": int(len(rows)), "eval_users": int(task.num_users), "max_users": int(max_users),
              "seed": int(seed), "selection": ("every evaluated user" if len(rows) == task.num_users else
                                               f"a seeded uniform sample of the evaluated users (seed {seed})")}
    if not len(rows):
        return {"groups": {}, "sample": {**sample, "seconds": time.perf_counter() - start}}
    sub = task.subset(rows)
    base_query = {key: np.asarray(v)[rows] for key, v in query.items()}
    cand = np.asarray(candidates)

    def recall(q_inputs: dict) -> dict[str, float]:
        q = np.asarray(embed(q_inputs))
        m = evaluate_scores(sub, lambda r: q[r] @ cand.T, ks=ks)
        return {f"recall@{k}": float(m[f"recall@{k}"]) for k in ks}

    base = recall(base_query)
    rng = np.random.default_rng(seed)
    out = {}
    for name, keys in groups.items():
        present = [key for key in keys if key in base_query]
        if not present:
            continue
        perm = rng.permutation(len(rows))
        shuffled = dict(base_query)
        for key in present:
            shuffled[key] = base_query[key][perm]
        after = recall(shuffled)
        out[name] = {f"{key}_drop": base[key] - after[key] for key in base}
    return {"groups": out, "sample": {**sample, **base, "seconds": time.perf_counter() - start}}


# -- all three ------------------------------------------------------------------

def report_k(k: int, ks: Sequence[int]) -> int:
    """The configured report K if it was evaluated, else the smallest evaluated (as trainer/report.py)."""
    return int(k) if k in ks else int(min(ks))


def diagnose(task: EvalTask, ranked: Mapping[str, np.ndarray], counts: np.ndarray, norms: np.ndarray, measured: str,
             query: Mapping[str, np.ndarray], embed: Callable[[dict], np.ndarray], candidates: np.ndarray,
             user_features: Sequence[str], ks: Sequence[int], cfg, seed: int = 0,
             started: float | None = None) -> tuple[dict, np.ndarray]:
    """metrics.json ``"diagnosis"`` and the per-item array the report plots.

    Args:
        ranked: model name -> int [num_users, L] top lists (``evaluate_and_rank``'s).
        counts: [num_items] train interaction counts.
        norms, measured: per-item candidate embedding norms and which vector (``PRE_NORMALISATION``
            or ``OUTPUT``).
        query, embed, candidates: ``permutation_importance``'s.
        user_features: the user side feature keys (each one importance group).
        ks: the evaluated cut-offs; cfg: trainer.hparams.EvaluationConfig.
        started: the ``time.perf_counter()`` the diagnosis's ``"seconds"`` count from (the caller's,
            when it computed the norms first); None = now.

    Returns:
        (the diagnosis dict, float64 [num_items, 3]: train count, norm, bucket per item).
    """
    start = time.perf_counter() if started is None else started
    counts = np.asarray(counts, dtype=np.float64)
    buckets = ba.popularity_buckets(counts, cfg.head_share, cfg.tail_share)
    deciles = popularity_deciles(counts)
    k = report_k(cfg.report_k, ks)
    out = {"norms": norm_summary(norms, counts, buckets, deciles, measured),
           "retrieved_popularity": retrieved_popularity(ranked, task.truth, counts, deciles, k)}
    if cfg.importance_users > 0:
        out["importance"] = permutation_importance(
            task, query, embed, candidates, query_groups(list(query), user_features),
            (*IMPORTANCE_KS, k), cfg.importance_users, seed)
        s = out["importance"]["sample"]
        log(f"retrieval: diagnosis: permutation importance of {len(out['importance']['groups'])} query input "
            f"groups on {s['users']:,} of {s['eval_users']:,} users took {s['seconds']:.2f} s")
    out["seconds"] = time.perf_counter() - start
    out["params"] = {"report_k": k, "head_share": cfg.head_share, "tail_share": cfg.tail_share,
                     "importance_users": cfg.importance_users}
    rho = out["norms"]["spearman_norm_vs_count"]
    log(f"retrieval: diagnosis took {out['seconds']:.2f} s; candidate norm ({measured}) vs train count: Spearman "
        + ("n/a" if rho is None else f"{rho:.3f}"))
    return out, np.column_stack([counts, np.asarray(norms, dtype=np.float64), buckets.astype(np.float64)])
