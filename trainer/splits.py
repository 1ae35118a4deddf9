"""Time-based train/eval splits of the canonical events table (and of train, for validation).

Two strategies, both "train on the past, evaluate on the future":

- ``global_time``: every event at or after the (1 - eval_fraction) quantile of all
  timestamps is eval; a model is evaluated as if deployed at that instant.
- ``per_user``: each user's most recent ``eval_fraction`` of events (at least one,
  and only for users with at least ``min_user_events``) is eval; every user is
  seen in training.
- ``leave_last_one``: each user's last event (users with at least
  ``min_user_events``) is eval, ``eval_fraction`` unused: the leave-one-out protocol
  of the sequential-recommendation papers (SASRec, BERT4Rec), reported as HR@10 and
  NDCG@10 over the full catalogue. Carved from train for validation, it holds out
  each user's second-to-last event, as those papers do.

Pure pandas so the example builder (train/eval), the trainers (a validation split
carved from train with the same strategy: trainer/skeleton.py), the evaluation and
the benchmarks share one definition.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from trainer.artifacts import EVAL, INTERACTION_SPLITS as SPLIT_NAMES, TRAIN  # noqa: F401  (the split names)

STRATEGIES = ("global_time", "per_user", "leave_last_one")


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    strategy: str = "global_time"  # global_time | per_user | leave_last_one (above)
    eval_fraction: float = 0.2  # the most recent 20%: the usual MovieLens protocol
    min_user_events: int = 5  # per_user: users with fewer events stay all-train


def assign_splits(
    events: pd.DataFrame,
    strategy: str = "global_time",
    eval_fraction: float = 0.2,
    min_user_events: int = 5,
    user_col: str = "user_id",
    time_col: str = "timestamp",
) -> pd.Series:
    """Returns a Series of 'train' / 'eval', aligned with ``events.index``.

    Ties in time are broken by row order, so the result is deterministic.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown split strategy {strategy!r}; expected one of {STRATEGIES}")
    if strategy != "leave_last_one" and not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if events.empty:
        return pd.Series([], dtype=object, index=events.index)

    if strategy == "global_time":
        order = np.lexsort((np.arange(len(events)), events[time_col].to_numpy()))
        n_eval = max(1, int(round(len(events) * eval_fraction)))
        is_eval = np.zeros(len(events), dtype=bool)
        is_eval[order[len(events) - n_eval :]] = True
        return pd.Series(np.where(is_eval, EVAL, TRAIN), index=events.index)

    # per_user / leave_last_one: rank each user's events by time (stable), newest last.
    frame = pd.DataFrame(
        {"u": events[user_col].to_numpy(), "t": events[time_col].to_numpy(), "pos": np.arange(len(events))}
    )
    frame = frame.sort_values(["u", "t", "pos"], kind="mergesort")
    rank = frame.groupby("u", sort=False).cumcount().to_numpy()
    count = frame.groupby("u", sort=False)["t"].transform("size").to_numpy()
    if strategy == "leave_last_one":
        n_eval = np.ones_like(count)
    else:
        n_eval = np.maximum(1, np.floor(count * eval_fraction + 1e-9).astype(int))
    is_eval_sorted = (count >= min_user_events) & (rank >= count - n_eval)
    is_eval = np.zeros(len(events), dtype=bool)
    is_eval[frame["pos"].to_numpy()] = is_eval_sorted
    return pd.Series(np.where(is_eval, EVAL, TRAIN), index=events.index)
