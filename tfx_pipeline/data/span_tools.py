"""Cuts one event log into dated spans, to try the daily loop on a static dataset.

``recsys data make-spans --config configs/movielens_100k.yaml --spans 3 --out DIR``
splits the config's events by global time into equal-count spans and writes
``DIR/span-<k>/`` (k = 1..N) with the span's events in the table's own columns
(rows unchanged), and the side tables restricted to the users and items seen up
to that span, so later spans bring new users and new items like a live log.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tfx_pipeline.config import PipelineConfig, resolve_path
from tfx_pipeline.data.tables import DataError, load_events, read_table
from trainer import features as F


def make_spans(cfg: PipelineConfig, out_dir: str | Path, num_spans: int, first_fraction: float | None = None,
               force: bool = False) -> list[dict]:
    """Writes span-1..span-N under ``out_dir``; returns one summary row per span.

    ``first_fraction``: the share of events in span 1 (the bootstrap history); the
    rest is cut into equal parts. Default: equal parts throughout.
    """
    if cfg.data.spans is not None:
        raise DataError("make-spans cuts a single-table dataset; this config already reads spans")
    if num_spans < 1:
        raise DataError(f"--spans must be >= 1, got {num_spans}")
    if first_fraction is not None and not 0.0 < first_fraction < 1.0:
        raise DataError(f"--first-fraction must be in (0, 1), got {first_fraction}")
    out = resolve_path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise DataError(f"{out} exists and is not empty; pass --force to replace it")
    events_path = resolve_path(cfg.data.events.path)
    raw = read_table(events_path, cfg.data.events.format)
    canon = load_events(cfg)  # validated; same row order as ``raw``
    order = np.argsort(canon[F.TIMESTAMP].to_numpy(), kind="stable")
    n = len(order)
    if first_fraction is None:
        bounds = np.linspace(0, n, num_spans + 1).round().astype(int)
    else:
        first = int(round(n * first_fraction))
        bounds = np.concatenate([[0], np.linspace(first, n, num_spans).round().astype(int)])
    tmp = Path(tempfile.mkdtemp(prefix=".spans-", dir=out.parent if out.parent.exists() else None))
    summary = []
    seen_users: set = set()
    seen_items: set = set()
    for k in range(num_spans):
        rows = order[bounds[k]:bounds[k + 1]]
        span_dir = tmp / f"span-{k + 1}"
        span_dir.mkdir(parents=True)
        raw.iloc[np.sort(rows)].to_csv(span_dir / Path(cfg.data.events.path).name, index=False)
        users = set(canon[F.USER_ID].to_numpy()[rows])
        items = set(canon[F.ITEM_ID].to_numpy()[rows])
        new_users, new_items = users - seen_users, items - seen_items
        seen_users |= users
        seen_items |= items
        for table, seen in ((cfg.data.users, seen_users), (cfg.data.items, seen_items)):
            if table is None:
                continue
            side = read_table(resolve_path(table.path), table.format)
            keep = side[table.id_column].astype(str).str.strip().isin(seen)
            side[keep].to_csv(span_dir / Path(table.path).name, index=False)
        ts = canon[F.TIMESTAMP].to_numpy()[rows]
        summary.append({"span": k + 1, "events": int(len(rows)), "new_users": len(new_users),
                        "new_items": len(new_items), "from": pd.Timestamp(int(ts.min()), unit="s").isoformat(),
                        "to": pd.Timestamp(int(ts.max()), unit="s").isoformat()})
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return summary
