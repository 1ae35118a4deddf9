"""Slices of the retrieval evaluation (ours vs the baselines per user group) and fairness ratios.

From the ranked lists of every model (``metrics.evaluate_and_rank``) on one eval task:

- ``user_activity``: ``cold`` users (at most ``threshold`` train events) vs ``warm`` (the
  rest). The threshold is configured, or from the data: the ``percentile``-th percentile
  (20th by default) of the evaluated users' train events (users with no train event
  count 0). Every accuracy and beyond-accuracy metric, over the group's users.
- ``item_popularity``: ``head`` / ``torso`` / ``tail`` (beyond_accuracy.popularity_buckets)
  of the *relevant* items: the accuracy metrics with each user's truth cut to the truth
  items in that bucket, over the users with at least one such item (so Recall@K of
  ``tail`` is the share of a user's tail truth items the lists found).
- ``user_feature:<key>``: one group per value of a user feature, as of the user's first
  eval event (what the query used); with ``user_features: ["*"]`` a categorical feature
  with more than ``max_groups`` values is left out (named in params); missing values form ``(missing)``, a categorical
  feature's values beyond the ``max_groups - 1`` most frequent are pooled as ``(other)``, a numeric one
  with more than ``max_groups`` distinct values is cut into ``numeric_bins`` quantile bands.
  Fairness: per model and K, the best group's Recall@K over the worst's, among the groups
  with at least ``min_group_users`` users (None when the worst is 0 or fewer than two
  groups qualify).

A group entry is ``{"num_users": n, "<model>": {metric: value}}`` for every ranked model.
The user activity groups and the user feature groups partition the evaluated users, so
the overall mean of a per-user metric is the user-weighted mean of its groups'.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from trainer.retrieval import beyond_accuracy as ba
from trainer.retrieval.metrics import METRIC_NAMES, EvalTask, per_user_metrics

MISSING, OTHER = "(missing)", "(other)"
COLD, WARM = "cold", "warm"


def cold_threshold(train_events: np.ndarray, max_events: int = -1, percentile: float = 20.0) -> int:
    """The cold-user threshold: ``max_events`` if >= 0, else the ``percentile``-th percentile
    (numpy's default linear interpolation, rounded down) of ``train_events``."""
    if max_events >= 0:
        return int(max_events)
    if not len(train_events):
        return 0
    return int(np.floor(np.percentile(np.asarray(train_events, dtype=np.float64), percentile)))


def feature_groups(values: np.ndarray, kind: str, max_groups: int = 25, numeric_bins: int = 4) -> np.ndarray:
    """One group label (str) per user from a user feature column (see the module docstring).

    Args:
        values: [n] bytes/str (categorical) or float (numeric; NaN = missing).
        kind: "categorical" or "numeric".
    """
    if kind == "numeric":
        x = np.asarray(values, dtype=np.float64)
        labels = np.full(len(x), MISSING, dtype=object)
        ok = ~np.isnan(x)
        distinct = np.unique(x[ok])
        if len(distinct) <= max_groups:
            labels[ok] = [f"{v:g}" for v in x[ok]]
        else:
            edges = np.unique(np.quantile(x[ok], np.linspace(0, 1, numeric_bins + 1)))
            band = np.clip(np.searchsorted(edges, x[ok], side="right") - 1, 0, len(edges) - 2)
            names = [f"[{edges[b]:g}, {edges[b + 1]:g}{']' if b == len(edges) - 2 else ')'}"
                     for b in range(len(edges) - 1)]
            labels[ok] = [names[b] for b in band]
        return labels
    labels = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    labels[labels == ""] = MISSING
    counts = pd.Series(labels[labels != MISSING]).value_counts(sort=False)
    if len(counts) > max_groups:
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # most users first, ties by value
        keep = {v for v, _ in ranked[: max_groups - 1]} | {MISSING}  # "(missing)" is never pooled
        labels = np.array([v if v in keep else OTHER for v in labels], dtype=object)
    return labels


def _metrics_over(rows: np.ndarray, accuracy: dict, lists: dict, truth_values: dict, topk: np.ndarray,
                  num_items: int, ks: Sequence[int]) -> dict:
    out = {name: float(v[rows].mean()) for name, v in accuracy.items()}
    out.update(ba.summarize({n: v[rows] for n, v in lists.items()}, {n: v[rows] for n, v in truth_values.items()},
                            topk[rows], num_items, ks))
    return out


def _groups(labels: np.ndarray, order: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    names = list(order) if order is not None else sorted(set(labels.tolist()), key=str)
    return [(name, np.flatnonzero(labels == name)) for name in names]


def fairness(groups: dict, models: Sequence[str], ks: Sequence[int], min_group_users: int) -> dict:
    """Per model and K: best / worst group Recall@K among groups with >= ``min_group_users`` users."""
    out = {}
    for model in models:
        for k in ks:
            key = f"recall@{k}"
            values = {g: e[model][key] for g, e in groups.items() if e["num_users"] >= min_group_users and model in e}
            if len(values) < 2:
                entry = {"ratio": None, "best": None, "worst": None,
                         "why": f"fewer than 2 groups with >= {min_group_users} users"}
            else:
                best, worst = max(values, key=values.get), min(values, key=values.get)
                ratio = values[best] / values[worst] if values[worst] > 0 else None
                entry = {"ratio": ratio, "best": best, "worst": worst}
                if ratio is None:
                    entry["why"] = f"the worst group ({worst}) has recall 0"
            out.setdefault(model, {})[key] = entry
    return out


def analyse(task: EvalTask, ranked: dict[str, np.ndarray], items: ba.ItemContext, train_events: np.ndarray,
            user_labels: dict[str, np.ndarray], ks: Sequence[int], cold_max_events: int = -1,
            cold_percentile: float = 20.0, min_group_users: int = 10) -> dict:
    """``{"beyond_accuracy": ..., "slices": ...}`` of ``metrics.json`` for every ranked model.

    Args:
        task: the eval task the lists were ranked on.
        ranked: model name (``model``, ``popularity``, ``als``) -> int [num_users, L] lists.
        items: per-item counts, buckets, embeddings, feature sets.
        train_events: [num_users] train events of each evaluated user.
        user_labels: slicing name (e.g. ``user_gender``) -> [num_users] group labels
            (``feature_groups``).
        ks: cut-offs.
        cold_max_events, cold_percentile: ``cold_threshold``'s.
        min_group_users: ``fairness``'s.
    """
    ks = tuple(sorted({int(k) for k in ks}))
    n = task.num_users
    train_events = np.asarray(train_events)
    if train_events.shape != (n,):
        raise ValueError(f"train_events has shape {train_events.shape}; expected ({n},)")
    for name, topk in ranked.items():
        if topk.shape[0] != n:
            raise ValueError(f"{name}: {topk.shape[0]} ranked lists for {n} evaluated users")
    truth_values = ba.per_user_truth_metrics(task.truth, items)
    accuracy = {m: per_user_metrics(topk, task.truth, ks) for m, topk in ranked.items()}
    lists = {m: ba.per_user_list_metrics(topk, items, ks) for m, topk in ranked.items()}
    everyone = np.arange(n)

    def entry(rows: np.ndarray) -> dict:
        e = {"num_users": int(len(rows))}
        if len(rows):
            for m, topk in ranked.items():
                e[m] = _metrics_over(rows, accuracy[m], lists[m], truth_values, topk, items.num_items, ks)
        return e

    whole = entry(everyone)
    overall = {m: {k: v for k, v in whole[m].items() if k.split("@")[0] not in METRIC_NAMES}
               for m in ranked if m in whole}
    truth_summary = {name: (float(np.nanmean(v)) if n else None) for name, v in truth_values.items()}
    beyond = {**overall, "truth": truth_summary, "num_users": n,
              "params": {"ks": list(ks), "bucket_items": {b: int((items.buckets == i).sum())
                                                          for i, b in enumerate(ba.BUCKETS)}}}

    threshold = cold_threshold(train_events, cold_max_events, cold_percentile)
    activity = np.where(train_events <= threshold, COLD, WARM).astype(object)
    slices: dict = {"user_activity": {
        "threshold": threshold,
        "rule": (f"cold: <= {threshold} train events ("
                 + ("configured" if cold_max_events >= 0 else f"the {cold_percentile:g}th percentile of the "
                    f"evaluated users' train events") + "); warm: the rest"),
        "groups": {g: entry(rows) for g, rows in _groups(activity, (COLD, WARM))}}}

    item_groups = {}
    for b, name in enumerate(ba.BUCKETS):
        in_bucket = sp.diags((items.buckets == b).astype(np.float64))
        cut = sp.csr_matrix(task.truth.astype(np.float64) @ in_bucket, dtype=bool)
        cut.eliminate_zeros()
        rows = np.flatnonzero(np.diff(cut.indptr) > 0)
        e = {"num_users": int(len(rows)), "num_truth_items": int(cut.nnz), "num_items": int((items.buckets == b).sum())}
        if len(rows):
            for m, topk in ranked.items():
                e[m] = {k: float(v.mean()) for k, v in per_user_metrics(topk[rows], cut[rows], ks).items()}
        item_groups[name] = e
    slices["item_popularity"] = {"rule": "the relevant items' train popularity bucket (head / torso / tail); "
                                         "each user's truth cut to that bucket", "groups": item_groups}

    for name, labels in user_labels.items():
        labels = np.asarray(labels, dtype=object)
        if labels.shape != (n,):
            raise ValueError(f"user feature {name}: {labels.shape} labels for {n} evaluated users")
        groups = {g: entry(rows) for g, rows in _groups(labels)}
        slices[f"user_feature:{name}"] = {
            "groups": groups, "fairness": fairness(groups, list(ranked), ks, min_group_users),
            "min_group_users": min_group_users}
    return {"beyond_accuracy": beyond, "slices": slices}



def _canonical(name: str, prefix: str) -> str:
    return name if name.startswith(prefix) else prefix + name


def choose_item_feature(setting: str, item_kinds: dict) -> str | None:
    """The item feature of ``diversity_feature`` (EvaluationConfig.item_feature): a key or None.

    Raises:
        ValueError: a named feature that is not a categorical or multi-valued item feature.
    """
    usable = sorted(k for k, kind in item_kinds.items() if kind in ("categorical", "multi_valued"))
    if setting == "none":
        return None
    if not setting:
        multi = [k for k in usable if item_kinds[k] == "multi_valued"]
        return (multi or usable or [None])[0]
    key = _canonical(setting, "item_")
    if key not in usable:
        raise ValueError(f"trainer.evaluation.item_feature {setting!r} is not a categorical or multi-valued item "
                         f"feature of this dataset; choose one of {usable or 'none (set it to none)'}")
    return key


def choose_user_features(setting: Sequence[str], user_kinds: dict) -> list[str]:
    """The user features to slice by (EvaluationConfig.user_features), as keys.

    Raises:
        ValueError: a named feature that is not a categorical or numeric user feature.
    """
    usable = sorted(k for k, kind in user_kinds.items() if kind in ("categorical", "numeric"))
    if list(setting) == ["*"]:
        return usable
    keys = []
    for name in setting:
        key = _canonical(name, "user_")
        if key not in usable:
            raise ValueError(f"trainer.evaluation.user_features: {name!r} is not a categorical or numeric user "
                             f"feature of this dataset; choose among {usable} (or '*' for all)")
        keys.append(key)
    return keys


def check_config(cfg, side_features: dict) -> None:
    """Raises ValueError early if ``cfg`` (EvaluationConfig) names features the dataset lacks."""
    choose_item_feature(cfg.item_feature, {k: v for k, v in side_features.items() if k.startswith("item_")})
    choose_user_features(cfg.user_features, {k: v for k, v in side_features.items() if k.startswith("user_")})


def run_analysis(task: EvalTask, ranked: dict[str, np.ndarray], counts: np.ndarray, embeddings: np.ndarray | None,
                 item_columns: dict, item_kinds: dict, user_columns: dict, user_kinds: dict,
                 train_events: np.ndarray, ks: Sequence[int], cfg) -> dict:
    """``analyse`` with its inputs built from raw columns and ``cfg`` (trainer.hparams.EvaluationConfig).

    Args:
        item_columns: item feature key -> [num_items] column in catalogue order (multi-valued:
            [num_items, L] padded with b"").
        user_columns: user feature key -> [num_users] values of each evaluated user.
        item_kinds, user_kinds: key -> kind.
    """
    feature = choose_item_feature(cfg.item_feature, item_kinds)
    sets = None
    if feature is not None:
        col = np.asarray(item_columns[feature])
        sets = ba.feature_sets([list(row) for row in col] if col.ndim == 2 else list(col))
    items = ba.ItemContext(counts=np.asarray(counts, dtype=np.float64),
                           buckets=ba.popularity_buckets(counts, cfg.head_share, cfg.tail_share),
                           embeddings=embeddings, features=sets)
    labels, skipped = {}, {}
    for key in choose_user_features(cfg.user_features, user_kinds):
        values = user_columns[key]
        distinct = len(set(values.tolist())) if user_kinds[key] == "categorical" else 0
        if list(cfg.user_features) == ["*"] and distinct > cfg.max_groups:
            # "*" slices by the features with few values; a high-cardinality one (a zip
            # prefix) is sliced only when named, its values beyond max_groups - 1 pooled.
            skipped[key] = f"{distinct} values > max_groups {cfg.max_groups}: name it in user_features to slice by it"
            continue
        labels[key] = feature_groups(values, user_kinds[key], cfg.max_groups, cfg.numeric_bins)
    out = analyse(task, ranked, items, train_events, labels, ks, cfg.cold_user_max_events,
                  cfg.cold_user_percentile, cfg.min_group_users)
    out["beyond_accuracy"]["params"].update({
        "item_feature": feature, "embeddings": "ours (the two-tower candidate embeddings), for every model",
        "head_share": cfg.head_share, "tail_share": cfg.tail_share, "report_k": cfg.report_k,
        "user_features_skipped": skipped,
        "novelty": "-log2((c_i + 1) / (N + |I|)), c_i the train interactions of item i"})
    return out
