"""Offline retrieval quality of every registered model on a dataset's splits.

    python -m bench.quality --config configs/movielens_100k.yaml \\
        [--split per_user|global_time|leave_last_one|both|all] [--epochs N] [--out bench/results] [--smoke] \\
        [--models popularity,als] [--plugin my_package.my_models] [--set trainer.retrieval.epochs=4 ...]

Loads the canonical tables through the config, builds the split(s):

- ``per_user``: each user's most recent 20% of events held out (users with at
  least ``examples.split.min_user_events`` events), so every eval user is known;
- ``leave_last_one``: each user's last event held out (users with at least
  ``min_user_events``), the sequential-recommendation protocol (HR@10, NDCG@10);
- ``global_time``: the most recent ``examples.split.eval_fraction`` of all events
  held out (eval users may be new),

trains every model in ``bench.baselines.MODELS`` (plus the ones registered by
``--plugin`` modules) on the train split and evaluates it on the full catalogue
with ``trainer.retrieval.metrics.evaluate_scores``. Writes, per split,
``<out>/quality_<dataset>_<split>[_smoke].json`` and ``.md`` and prints the table.

``--smoke`` subsamples a few users and trains one epoch: seconds, for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from bench import baselines as B
from trainer import splits as S
from tfx_pipeline.config import PipelineConfig, load_config, overrides_from_pairs, resolve_path
from tfx_pipeline.data.tables import catalogue, load_tables
from trainer import features as F
from trainer.retrieval import metrics as rm

KS = (10, 50, 100)
PER_USER_EVAL_FRACTION = 0.2
SMOKE_USERS = 40
SPLITS = ("per_user", "global_time", "leave_last_one")
BOTH = ("per_user", "global_time")  # --split both (the default); --split all adds leave_last_one
TABLE_COLUMNS = (
    ("Recall@10", "recall@10"),
    ("Recall@50", "recall@50"),
    ("Recall@100", "recall@100"),
    ("NDCG@10", "ndcg@10"),
    ("HitRate@10", "hit_rate@10"),
)


def split_events(
    events: pd.DataFrame, cfg: PipelineConfig, split: str
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(train, eval, eval_fraction) of ``events`` under the benchmark's split ``split``."""
    sc = cfg.examples.split
    if split == "per_user":
        fraction = PER_USER_EVAL_FRACTION
    elif split == "global_time":
        fraction = sc.eval_fraction
    elif split == "leave_last_one":
        fraction = 0.0  # one event per user, not a fraction
    else:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    labels = S.assign_splits(events, split, fraction, sc.min_user_events)
    return events[labels == S.TRAIN], events[labels == S.EVAL], fraction


def subsample_users(events: pd.DataFrame, n_users: int, seed: int) -> pd.DataFrame:
    users = np.sort(events[F.USER_ID].unique())
    if len(users) <= n_users:
        return events
    chosen = np.random.default_rng(seed).choice(users, size=n_users, replace=False)
    return events[events[F.USER_ID].isin(chosen)]


def run_split(
    events: pd.DataFrame,
    item_ids: list[str],
    cfg: PipelineConfig,
    split: str,
    models: dict[str, B.ModelFn],
    bcfg: B.BaselineConfig,
    ks: Sequence[int] = KS,
    log=print,
) -> dict:
    """Trains and evaluates every model on one split; returns the JSON-able report."""
    train, ev, fraction = split_events(events, cfg, split)
    task = rm.build_eval_task(train, ev, item_ids)
    train_users = set(train[F.USER_ID].unique())
    report = {
        "dataset": cfg.name,
        "split": split,
        "eval_fraction": fraction,
        "min_user_events": cfg.examples.split.min_user_events,
        "protocol": (
            "full-catalogue ranking; truth = distinct eval items not seen in train; train items "
            "masked; recall@K = |topK & truth| / |truth| (uncapped); NDCG binary, ideal over "
            "min(K, |truth|); mean over users with >= 1 truth item (trainer/retrieval/metrics.py)"
        ),
        "num_events": int(len(events)),
        "num_train_events": int(len(train)),
        "num_eval_events": int(len(ev)),
        "num_items": task.num_items,
        "num_eval_users": task.num_users,
        "num_cold_eval_users": int(sum(u not in train_users for u in task.user_ids)),
        "num_dropped_eval_events": task.num_dropped_eval_events,
        "config_fingerprint": cfg.fingerprint(),
        "baseline_config": bcfg.to_json_dict(),
        "models": {},
    }
    # Plug-ins that rebuild the split themselves (bench/ours.py) need its name.
    bcfg = dataclasses.replace(bcfg, extra={**bcfg.extra, "split": split})
    for name, fn in models.items():
        if callable(getattr(fn, "setup", None)):
            fn.setup(bcfg)  # untimed one-off work (imports)
        t0 = time.perf_counter()
        score_fn = fn(train, task, bcfg)
        t1 = time.perf_counter()
        metrics = rm.evaluate_scores(task, score_fn, ks=ks)
        t2 = time.perf_counter()
        report["models"][name] = {
            "metrics": metrics,
            "train_seconds": round(t1 - t0, 3),
            "eval_seconds": round(t2 - t1, 3),
        }
        log(f"[quality] {cfg.name}/{split}: {name}: recall@{max(ks)}={metrics[f'recall@{max(ks)}']:.4f} "
            f"train {t1 - t0:.1f}s eval {t2 - t1:.1f}s")
    return report


def markdown_table(report: dict) -> str:
    head = (
        f"**{report['dataset']} / {report['split']}**"
        f"{' (smoke)' if report.get('smoke') else ''}: {report['num_eval_users']} eval users "
        f"({report['num_cold_eval_users']} cold), {report['num_items']} items, "
        f"{report['num_train_events']} train / {report['num_eval_events']} eval events\n\n"
    )
    cols = ["Model"] + [c for c, _ in TABLE_COLUMNS] + ["Train s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    for name, r in report["models"].items():
        vals = [f"{r['metrics'][k]:.4f}" for _, k in TABLE_COLUMNS]
        lines.append("| " + " | ".join([name, *vals, f"{r['train_seconds']:.1f}"]) + " |")
    return head + "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"quality_{report['dataset']}_{report['split']}{'_smoke' if report.get('smoke') else ''}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    md_path.write_text(markdown_table(report))
    return json_path, md_path


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="dataset config YAML")
    p.add_argument("--split", choices=(*SPLITS, "both", "all"), default="both")
    p.add_argument("--epochs", type=int, default=None, help="two-tower epochs (default 3; smoke 1)")
    p.add_argument("--out", default="bench/results", help="output directory")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_USERS} users, 1 epoch: seconds")
    p.add_argument("--models", default="", help="comma-separated subset of the registered models")
    p.add_argument("--plugin", action="append", default=[],
                   help="module to import first; it registers models with bench.baselines.register")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value as the pipeline does, e.g. --set trainer.retrieval.history_encoder=sasrec")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per model")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for module in args.plugin:
        importlib.import_module(module)
    models = B.get_models([m for m in args.models.split(",") if m])
    overrides = overrides_from_pairs(args.set)
    cfg = load_config(args.config, overrides or None)
    from tfx_pipeline.data.datasets import ensure_dataset

    ensure_dataset(cfg)
    events, _, items = load_tables(cfg)
    item_ids = catalogue(events, items)
    if args.smoke:
        events = subsample_users(events, SMOKE_USERS, args.seed)
    epochs = args.epochs if args.epochs is not None else (1 if args.smoke else B.BaselineConfig.epochs)
    bcfg = B.BaselineConfig(seed=args.seed, epochs=epochs, num_threads=args.threads, pipeline=cfg,
                            extra={"overrides": overrides})
    out_dir = resolve_path(args.out)
    started = time.perf_counter()
    for split in BOTH if args.split == "both" else SPLITS if args.split == "all" else (args.split,):
        t0 = time.perf_counter()
        report = run_split(events, item_ids, cfg, split, models, bcfg)
        report["smoke"] = bool(args.smoke)
        report["wall_seconds"] = round(time.perf_counter() - t0, 3)
        report["host"] = {"python": platform.python_version(), "machine": platform.machine()}
        json_path, md_path = write_report(report, out_dir)
        print()
        print(markdown_table(report))
        print(f"[quality] wrote {json_path} and {md_path}")
    print(f"[quality] total wall time {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
