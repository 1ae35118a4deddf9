"""A sparse development dataset: a dataset cut down to at most N training events per user.

    python -m bench.sparse_subsample --config configs/movielens_1m.yaml --max-train-events 5 \\
        [--sparse-config configs/movielens_1m_sparse.yaml] [--out data/movielens_1m_sparse] [--seed 0]

Reads the source dataset through ``--config`` (fetching it first if it is a built-in one)
and writes the same tables, same columns, ids and values verbatim, under ``--out``
(default: the directory ``--sparse-config`` reads). ``configs/movielens_1m_sparse.yaml``
reads them; run this command once before using that config.

What "at most N training events" means depends on the split, so the split is the one
``--sparse-config`` declares (``examples.split``), and the result is checked under it:

- per user, the user's last event is kept (the event the leave-last-one split holds
  out, on the full log as on the subsample), plus at most N of the user's earlier
  events, drawn at random with ``--seed`` (their time order is kept). So every user
  has at most N + 1 events: under ``leave_last_one`` (the sparse config's split) the
  last is eval and at most N are train; ``per_user`` gives the same bound. A user who
  would keep fewer than ``min_user_events`` events gets no eval event under either
  split, so such a user keeps at most N events, all train.
- ``global_time`` is refused: its cut is a quantile of all the subsample's timestamps,
  so it moves when the log is thinned, and a user whose kept events all precede it
  would have all of them in train; no per-user bound holds.

Side tables keep the rows of the users and items that remain in the events. Prints a
summary (users, items, events, train/eval events, events per user and per item).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from tfx_pipeline.config import PipelineConfig, load_config, resolve_path
from tfx_pipeline.data.datasets import ensure_dataset
from tfx_pipeline.data.tables import load_events, read_table
from trainer import features as F
from trainer import splits as S

DEFAULT_SPARSE_CONFIG = "configs/movielens_1m_sparse.yaml"
PER_USER_SPLITS = ("leave_last_one", "per_user")


def select_sparse(events: pd.DataFrame, max_train: int, split: S.SplitConfig, seed: int = 0) -> np.ndarray:
    """A boolean mask over ``events`` rows: at most ``max_train`` train events per user under ``split``."""
    if split.strategy not in PER_USER_SPLITS:
        raise ValueError(f"split strategy {split.strategy!r} bounds no user's train events (its cut moves when "
                         f"the log is thinned); use one of {PER_USER_SPLITS}")
    if max_train < 1:
        raise ValueError("max_train must be >= 1")
    # The order trainer/splits.py ranks a user's events in (time, then row), newest last.
    frame = pd.DataFrame({"u": events[F.USER_ID].to_numpy(), "t": events[F.TIMESTAMP].to_numpy(),
                          "pos": np.arange(len(events))}).sort_values(["u", "t", "pos"], kind="mergesort")
    frame["key"] = np.random.default_rng(seed).random(len(frame))
    by_user = frame.groupby("u", sort=False)
    rank = by_user.cumcount().to_numpy()
    count = by_user["t"].transform("size").to_numpy()
    last = rank == count - 1
    # Users who keep N + 1 events get an eval event (their last); the others keep N, all train.
    with_eval = np.minimum(count, max_train + 1) >= split.min_user_events
    candidate = ~(last & with_eval)  # the events drawn from at random
    frame["draw"] = np.where(candidate, frame["key"], np.inf)
    draw_rank = frame.groupby("u", sort=False)["draw"].rank(method="first").to_numpy()
    keep_sorted = (last & with_eval) | (candidate & (draw_rank <= max_train))
    keep = np.zeros(len(events), dtype=bool)
    keep[frame["pos"].to_numpy()] = keep_sorted
    return keep


def check_sparse(kept: pd.DataFrame, max_train: int, split: S.SplitConfig) -> pd.Series:
    """The split labels of ``kept``; raises if a user has more than ``max_train`` train events."""
    labels = S.assign_splits(kept, split.strategy, split.eval_fraction, split.min_user_events)
    train_per_user = kept[F.USER_ID][labels == S.TRAIN].value_counts()
    if len(train_per_user) and train_per_user.max() > max_train:
        user = train_per_user.index[0]
        raise AssertionError(f"user {user!r} has {train_per_user.iloc[0]} train events under {split}, "
                             f"more than {max_train}")
    return labels


def summary(kept: pd.DataFrame, labels: pd.Series) -> dict:
    per_user = kept[F.USER_ID].value_counts()
    per_item = kept[F.ITEM_ID].value_counts()
    return {
        "users": int(per_user.size), "items": int(per_item.size), "events": int(len(kept)),
        "train_events": int((labels == S.TRAIN).sum()), "eval_events": int((labels == S.EVAL).sum()),
        "events_per_user": {"min": int(per_user.min()), "median": float(per_user.median()),
                            "mean": round(float(per_user.mean()), 2), "max": int(per_user.max())},
        "events_per_item": {"min": int(per_item.min()), "median": float(per_item.median()),
                            "mean": round(float(per_item.mean()), 2), "max": int(per_item.max()),
                            "items_with_one_event": int((per_item == 1).sum())},
    }


def write_sparse(source: PipelineConfig, out_dir: Path, max_train: int, split: S.SplitConfig,
                 seed: int = 0) -> dict:
    """Writes the subsampled tables of ``source`` under ``out_dir``; returns the summary."""
    if source.data.spans is not None:
        raise ValueError("a spans dataset is not supported; point --config at a single events table")
    events = load_events(source)  # validated, row i = record i of the file
    raw = read_table(resolve_path(source.data.events.path), source.data.events.format)
    keep = select_sparse(events, max_train, split, seed)
    kept = events[keep].reset_index(drop=True)
    labels = check_sparse(kept, max_train, split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw[keep].to_csv(out_dir / Path(source.data.events.path).with_suffix(".csv").name, index=False)
    for side, ids in ((source.data.users, set(kept[F.USER_ID])), (source.data.items, set(kept[F.ITEM_ID]))):
        if side is not None:
            table = read_table(resolve_path(side.path), side.format)
            table[table[side.id_column].astype(str).isin(ids)].to_csv(
                out_dir / Path(side.path).with_suffix(".csv").name, index=False)
    return summary(kept, labels)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sparse_subsample", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the source dataset's config (e.g. configs/movielens_1m.yaml)")
    p.add_argument("--max-train-events", type=int, default=5, help="train events per user at most (default 5)")
    p.add_argument("--sparse-config", default=DEFAULT_SPARSE_CONFIG,
                   help="the config that reads the result: its split is the one checked (default: %(default)s)")
    p.add_argument("--out", default=None, help="output directory (default: the one --sparse-config reads)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    source = load_config(args.config)
    target = load_config(args.sparse_config)
    target_dir = resolve_path(target.data.events.path).parent
    out = resolve_path(args.out) if args.out else target_dir
    if out != target_dir:
        print(f"note: {args.sparse_config} reads {target_dir}, not {out}")
    ensure_dataset(source)
    s = write_sparse(source, out, args.max_train_events, target.examples.split, args.seed)
    split = target.examples.split
    print(f"sparse {source.name}: {s['users']:,} users, {s['items']:,} items, {s['events']:,} events "
          f"({s['train_events']:,} train / {s['eval_events']:,} eval under {split.strategy}, "
          f"min_user_events {split.min_user_events}) -> {out}")
    pu, pi = s["events_per_user"], s["events_per_item"]
    print(f"  events per user: min {pu['min']}, median {pu['median']:g}, mean {pu['mean']}, max {pu['max']}")
    print(f"  events per item: min {pi['min']}, median {pi['median']:g}, mean {pi['mean']}, max {pi['max']}; "
          f"{pi['items_with_one_event']:,} items with one event")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
