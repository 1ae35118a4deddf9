"""Wall time and peak memory of the pipeline, per component, at 1x and 10x the event log.

    python -m bench.pipeline_bench [--config configs/movielens_100k.yaml] [--scales 1,10] \\
        [--stage all|data] [--epochs 1] [--root-base runs/bench_scale] [--out bench/results] [--smoke]

For each scale the whole pipeline (``tfx_pipeline.local_runner.run_local``, cache off)
runs in a fresh child process into its own root ``<root-base>/<name>_x<scale>/``
(pipeline_root and serving_base_path overridden; never runs/<name>). Scale 1 reads
the dataset's own tables. Scale S > 1 writes a synthetic event log S times larger
to ``<root-base>/<name>_x<S>/data/events.csv`` plus the derived config
``<root-base>/<name>_x<S>/config.yaml``: S replicas of the event table, each
resampled with replacement (same users, same items, same rating distribution) and
shifted by ``r * span`` in time (span = the original log's time range), so the log
is S times longer and per-user sequences repeat. Users / items tables are shared.

Per component: start, end and duration from the ML Metadata execution timestamps
(create_time / last_update_time); peak resident memory of the run's process tree
(process + children) from a psutil sampling thread (every ``--sample-s``),
attributed to components by time; the process's own peak from getrusage. The
trainer epochs default to ``--epochs 1`` (both models) and the gates are made
permissive so every component runs whatever the 1-epoch model's quality (the
benchmark measures cost, not quality). Writes ``<out>/pipeline_bench[_smoke].{json,md}``.

``--smoke``: the data stage of configs/implicit_demo.yaml into a temp root, in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from bench import common as C

PERMISSIVE_GATES = {"min_recall_at_100": 0.0, "min_auc": 0.0, "max_rmse": 1000.0, "min_lift_over_popularity": 0.0,
                    "min_lift_over_baseline": 0.0,
                    "max_recall_drop": 1.0, "max_auc_drop": 1.0, "max_rmse_increase": 1000.0}


# -- data --------------------------------------------------------------------------------


def scaled_events(cfg, scale: int, out_csv: Path, seed: int = 0) -> dict:
    """Writes the S-times event table (see module doc); returns its row counts."""
    import numpy as np
    import pandas as pd

    from tfx_pipeline.config import resolve_path

    ev = cfg.data.events
    if ev.timestamp_format != "unix_seconds":
        raise ValueError(f"scaling needs unix_seconds timestamps, {cfg.name} has {ev.timestamp_format}")
    src = resolve_path(ev.path)
    raw = pd.read_parquet(src) if (ev.format or src.suffix.lstrip(".")) == "parquet" else pd.read_csv(src)
    ts = ev.columns["timestamp"]
    span = int(raw[ts].max() - raw[ts].min()) + 1
    rng = np.random.default_rng(seed)
    parts = []
    for r in range(scale):
        part = raw.iloc[rng.integers(0, len(raw), len(raw))].copy()
        part[ts] = part[ts].astype(np.int64) + r * span
        parts.append(part)
    out = pd.concat(parts, ignore_index=True).sort_values(ts, kind="stable")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(out_csv, index=False)
    return {"source_events": int(len(raw)), "events": int(len(out)), "span_s": span}


def scale_config(config_path: str, scale: int, root: Path, epochs: Optional[int], permissive: bool,
                 log=print) -> tuple[Path, dict]:
    """Writes ``root/config.yaml`` (the derived config) and, for scale > 1, the scaled events."""
    import yaml

    from tfx_pipeline.config import load_config, resolve_path

    base = load_config(config_path)
    from tfx_pipeline.data.datasets import ensure_dataset

    ensure_dataset(base)
    raw = yaml.safe_load(resolve_path(config_path).read_text()) or {}
    raw["schema_dir"] = str(resolve_path(raw["schema_dir"]))
    for table in ("events", "users", "items"):
        if raw["data"].get(table):
            raw["data"][table]["path"] = str(resolve_path(raw["data"][table]["path"]))
    raw["pipeline_root"] = str(root)
    raw["serving_base_path"] = str(root / "serving")
    info = {"scale": scale}
    if scale > 1:
        csv = root / "data" / "events.csv"
        log(f"[pipeline-bench] writing the {scale}x event log to {csv}", flush=True)
        info.update(scaled_events(base, scale, csv))
        raw["data"]["events"]["path"] = str(csv)
        raw["data"]["events"]["format"] = "csv"
        raw["data"]["fetch"] = "none"
    trainer = raw.setdefault("trainer", {})
    if epochs:
        for model in ("retrieval", "ranking"):
            trainer.setdefault(model, {})["epochs"] = int(epochs)
    if permissive:
        trainer.setdefault("gate", {}).update(PERMISSIVE_GATES)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text("# derived by bench/pipeline_bench.py; never committed\n" + yaml.safe_dump(raw, sort_keys=False))
    load_config(path)  # validates
    return path, info


# -- measurement -------------------------------------------------------------------------------


class MemorySampler:
    """RSS of this process + its children, sampled on a thread: [(time, bytes)]."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:  # /proc fallback: this process only
            self._proc = None

    def _rss(self) -> int:
        if self._proc is None:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        total = 0
        for p in [self._proc] + self._proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except Exception:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.time(), self._rss()))
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> Optional[int]:
        vals = [b for t, b in self.samples if start <= t <= end]
        return max(vals) if vals else None


def component_timings(metadata_path: Path, since_s: float) -> list[dict]:
    """Per execution: node id, state, start / end (epoch s), duration, from ML Metadata."""
    from tfx_pipeline.local_runner import executions

    keys = ("component", "state", "start", "end", "seconds")
    return [{k: r[k] for k in keys} for r in executions(metadata_path, since_s)]


def run_measured(config_path: str, stage: str, sample_s: float, log=print) -> dict:
    """Runs the pipeline here (cache off) and returns the timing + memory report."""
    C.tf_env()
    from tfx_pipeline.config import load_config
    from tfx_pipeline.local_runner import run_local

    cfg = load_config(config_path)
    started = time.time()
    with MemorySampler(sample_s) as mem:
        error = None
        try:
            run_local(cfg, stage=stage, enable_cache=False)
        except Exception as e:  # reported, the timings so far still count
            error = f"{type(e).__name__}: {e}"[:1000]
        ended = time.time()
    comps = component_timings(cfg.metadata_path, started) if cfg.metadata_path.exists() else []
    for c in comps:
        peak = mem.peak(c["start"], c["end"] + sample_s)
        c["peak_rss_mb"] = round(peak / 2**20, 1) if peak else None
    self_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tree_peak = mem.peak()
    return {"config": str(config_path), "name": cfg.name, "root": str(cfg.root), "stage": stage,
            "wall_seconds": round(ended - started, 2), "error": error, "components": comps,
            "peak_rss_mb_tree_sampled": round(tree_peak / 2**20, 1) if tree_peak else None,
            "peak_rss_mb_process_getrusage": round(self_peak_kb / 1024, 1),
            "peak_rss_mb_children_getrusage": round(child_peak_kb / 1024, 1),
            "num_samples": len(mem.samples), "sample_s": sample_s}


def run_child(config_path: Path, stage: str, sample_s: float, result: Path, log_path: Path, limit_s: float) -> dict:
    cmd = [sys.executable, "-m", "bench.pipeline_bench", "--worker", str(config_path), "--stage", stage,
           "--sample-s", str(sample_s), "--worker-result", str(result)]
    env = {**os.environ, "PYTHONPATH": str(C.REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=str(C.REPO_ROOT), stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = "timeout"
    if result.exists():
        out = json.loads(result.read_text())
    else:
        out = {"config": str(config_path), "components": [], "error": f"worker exited {rc}; log {log_path}"}
    out["worker_rc"], out["log"] = rc, str(log_path)
    return out


# -- report ---------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    out = (f"**Pipeline cost per component**{' (smoke)' if report['smoke'] else ''}: stage {report['stage']}, "
           f"cache off, trainer epochs {report['epochs']}; durations from ML Metadata execution timestamps, "
           f"peak RSS of the run's process tree sampled every {report['sample_s']}s\n\n")
    runs = report["runs"]
    comps = list(dict.fromkeys(c["component"] for r in runs for c in r["components"]))
    cols = ["Component"]
    for r in runs:
        cols += [f"x{r['scale']} s", f"x{r['scale']} peak MB"]
    rows = []
    for name in comps:
        row = [name]
        for r in runs:
            c = next((c for c in r["components"] if c["component"] == name), None)
            row += [c["seconds"] if c else None, c["peak_rss_mb"] if c else None]
        rows.append(row)
    total = ["**run wall time / peak**"]
    for r in runs:
        total += [r.get("wall_seconds"), r.get("peak_rss_mb_tree_sampled")]
    rows.append(total)
    out += C.md_table(cols, rows)
    out += "\n" + C.md_table(["Scale", "Events", "Root", "Error"],
                             [[f"x{r['scale']}", r.get("events"), r.get("root"), r.get("error") or ""] for r in runs])
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/movielens_100k.yaml")
    p.add_argument("--scales", default="1,10")
    p.add_argument("--stage", default="all", choices=("all", "data"))
    p.add_argument("--epochs", type=int, default=1, help="trainer epochs for both models (0: the config's)")
    p.add_argument("--keep-gates", action="store_true", help="keep the config's gate thresholds")
    p.add_argument("--root-base", default="runs/bench_scale")
    p.add_argument("--sample-s", type=float, default=0.5)
    p.add_argument("--limit-s", type=float, default=1500, help="per-scale time limit of the child run")
    p.add_argument("--in-process", action="store_true", help="run in this process (default with --smoke)")
    p.add_argument("--out", default=str(C.RESULTS))
    p.add_argument("--smoke", action="store_true", help="data stage of configs/implicit_demo.yaml, temp root")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:  # child: one measured run
        res = run_measured(args.worker, args.stage, args.sample_s)
        Path(args.worker_result).write_text(json.dumps(res, indent=2))
        return 0 if not res["error"] else 1
    if args.smoke:
        args.config, args.scales, args.stage, args.in_process = "configs/implicit_demo.yaml", "1", "data", True
    from tfx_pipeline.config import load_config, resolve_path

    started = time.perf_counter()
    name = load_config(args.config).name
    tmp = tempfile.TemporaryDirectory(prefix="pipeline_bench_") if args.smoke else None
    base = Path(tmp.name) if tmp else resolve_path(args.root_base)
    runs = []
    try:
        for scale in [int(s) for s in args.scales.split(",") if s]:
            root = base / f"{name}_x{scale}"
            if root.exists() and not args.smoke:
                import shutil

                shutil.rmtree(root)  # a fresh root: no cache, no drift baseline, no blessed model
            cfg_path, info = scale_config(args.config, scale, root, args.epochs or None, not args.keep_gates)
            print(f"[pipeline-bench] x{scale}: {cfg_path} ({info})", flush=True)
            if args.in_process:
                res = run_measured(str(cfg_path), args.stage, args.sample_s)
            else:
                res = run_child(cfg_path, args.stage, args.sample_s, root / "bench_result.json",
                                root / "bench_run.log", args.limit_s)
            res.update(info)
            res["events"] = info.get("events") or _count_events(cfg_path)
            runs.append(res)
            print(f"[pipeline-bench] x{scale}: {res.get('wall_seconds')}s, peak {res.get('peak_rss_mb_tree_sampled')} MB"
                  f"{', error ' + res['error'] if res.get('error') else ''}", flush=True)
    finally:
        if tmp:
            tmp.cleanup()
    report = {"smoke": bool(args.smoke), "config": args.config, "stage": args.stage,
              "epochs": args.epochs or "config", "sample_s": args.sample_s, "runs": runs, "host": C.host_info(),
              "wall_seconds": round(time.perf_counter() - started, 2)}
    md = markdown(report)
    js, mdp = C.write_report(report, md, args.out, "pipeline_bench" + ("_smoke" if args.smoke else ""))
    print()
    print(md)
    print(f"[pipeline-bench] wrote {js} and {mdp}; wall time {report['wall_seconds']:.1f}s")
    return 0 if all(not r.get("error") for r in runs) else 1


def _count_events(cfg_path: Path) -> Optional[int]:
    from tfx_pipeline.config import load_config, resolve_path

    p = resolve_path(load_config(cfg_path).data.events.path)
    try:
        with open(p) as fh:
            return sum(1 for _ in fh) - 1
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
