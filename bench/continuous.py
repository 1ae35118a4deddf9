"""Warm vs cold start after a new span, through the real pipeline.

  python -m bench.continuous [--config configs/movielens_100k.yaml] [--first-fraction 0.8]

Cuts the dataset's event log into two spans (span 1: the first 80% of events by
time; span 2: the rest, bringing new users and items), then with LocalDagRunner:

1. runs the whole pipeline on span 1 (cold: nothing blessed yet);
2. runs it on span 2 with warm start on (the default): both trainers start from the
   models blessed on span 1, known ids' rows carried over;
3. runs span 2 again with ``trainer.warm_start.enabled=false``: the same Examples
   and Transform artifacts (cached), the trainers from scratch.

Prints and writes (bench/results/continuous.{json,md}) per model: training time
(``train_seconds`` in metrics.json: model build + warm start + fit), epochs run,
and quality on span 2's eval split (retrieval Recall@100 / NDCG@10 at user level,
ranking RMSE / AUC), read from each trainer's metrics.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench.common import RESULTS, host_info, md_table, write_report
from tfx_pipeline import component_ids as ids
from trainer.artifacts import METRICS_FILE


def _metrics(rows, trainer: str) -> dict:
    row = next(r for r in rows if r["component"] == trainer)
    if row["state"] != "COMPLETE":
        raise RuntimeError(f"{trainer} did not run ({row['state']}); use a fresh --root")
    return json.loads((Path(row["outputs"]["model"]) / METRICS_FILE).read_text())


def _summary(m: dict, kind: str) -> dict:
    out = {"train_seconds": m["train_seconds"], "epochs_run": m["epochs_run"],
           "warm_start": bool(m.get("warm_start", {}).get("taken"))}
    if kind == "retrieval":
        out.update({"recall@100": m["model"]["recall@100"], "ndcg@10": m["model"]["ndcg@10"]})
    else:
        out.update({"rmse": m["model"]["rmse"], "auc": m["model"]["auc"]})
    if out["warm_start"]:
        out["rows"] = {v["vocabulary"]: f"{v['rows_carried']} carried / {v['new_rows']} new"
                       for v in m["warm_start"]["remapped"].values() if v["vocabulary"] in ("user_id_vocab", "item_id_vocab")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/movielens_100k.yaml")
    ap.add_argument("--first-fraction", type=float, default=0.8)
    ap.add_argument("--root", default="runs/bench_continuous", help="work directory (replaced)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run, e.g. trainer.retrieval.epochs=4")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    import yaml

    from tfx_pipeline.config import deep_merge, load_config, resolve_path
    from tfx_pipeline.data.datasets import ensure_dataset
    from tfx_pipeline.local_runner import run_local
    from tfx_pipeline.data.span_tools import make_spans

    source = load_config(args.config)
    ensure_dataset(source)
    root = resolve_path(args.root)
    if root.exists():
        shutil.rmtree(root)
    cut = make_spans(source, root / "cut", 2, first_fraction=args.first_fraction)
    spans_dir = root / "spans"
    spans_dir.mkdir(parents=True)
    shutil.copytree(root / "cut" / "span-1", spans_dir / "span-1")

    raw = yaml.safe_load(Path(source.source_path).read_text())
    over = {"name": f"{source.name}_continuous", "pipeline_root": str(root / "pipeline"),
            "serving_base_path": str(root / "serving"),
            "data": {"fetch": "none", "spans": {"base": str(spans_dir)}}}
    for table in ("events", "users", "items"):
        if raw["data"].get(table):
            over["data"][table] = {"path": Path(raw["data"][table]["path"]).name}
    for item in args.set:
        key, _, value = item.partition("=")
        node = over
        for p in key.split(".")[:-1]:
            node = node.setdefault(p, {})
        node[key.split(".")[-1]] = yaml.safe_load(value)

    def cfg(**extra):
        return load_config(args.config, deep_merge(over, extra))

    runs = {}
    started = time.time()
    print(f"[continuous] span 1: {cut[0]['events']:,} events; span 2: {cut[1]['events']:,} events, "
          f"{cut[1]['new_users']} new users, {cut[1]['new_items']} new items", flush=True)
    print("[continuous] run 1: span 1 (cold)", flush=True)
    rows = run_local(cfg())
    runs["span1_cold"] = {k: _summary(_metrics(rows, t), k) for k, t in
                          (("retrieval", ids.RETRIEVAL_TRAINER), ("ranking", ids.RANKING_TRAINER))}
    shutil.copytree(root / "cut" / "span-2", spans_dir / "span-2")
    print("[continuous] run 2: span 2, warm start from the span-1 models", flush=True)
    rows = run_local(cfg())
    runs["span2_warm"] = {k: _summary(_metrics(rows, t), k) for k, t in
                          (("retrieval", ids.RETRIEVAL_TRAINER), ("ranking", ids.RANKING_TRAINER))}
    print("[continuous] run 3: span 2 again, cold start (trainer.warm_start.enabled=false)", flush=True)
    rows = run_local(cfg(trainer={"warm_start": {"enabled": False}}))
    runs["span2_cold"] = {k: _summary(_metrics(rows, t), k) for k, t in
                          (("retrieval", ids.RETRIEVAL_TRAINER), ("ranking", ids.RANKING_TRAINER))}

    table_rows = []
    for run, models in runs.items():
        r, k = models["retrieval"], models["ranking"]
        table_rows.append([run, r["train_seconds"], r["epochs_run"], r["recall@100"], r["ndcg@10"],
                           k["train_seconds"], k["epochs_run"], k["rmse"], k["auc"]])
    md = ("# Warm vs cold start after a new span\n\n"
          f"`python -m bench.continuous --config {args.config} --first-fraction {args.first_fraction}`"
          + "".join(f" --set {s}" for s in args.set) + "\n\n"
          + md_table(["run", "retrieval s", "epochs", "Recall@100", "NDCG@10", "ranking s", "epochs", "RMSE", "AUC"],
                     table_rows)
          + f"\nspans: {json.dumps(cut)}\n\nwarm-start rows: {json.dumps(runs['span2_warm']['retrieval'].get('rows'))}\n")
    report = {"config": args.config, "spans": cut, "runs": runs, "host": host_info(),
              "wall_seconds": time.time() - started, "overrides": args.set}
    js, mdp = write_report(report, md, args.out, "continuous")
    print(md)
    print(f"[continuous] wrote {js} and {mdp} in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
