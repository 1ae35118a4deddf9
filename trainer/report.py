"""The diagnosis report: curves, gradient norms, feature importance, the evaluation table
(retrieval: ours beside the popularity and ALS baselines, and a plain line for every
metric where ours loses to one of them, with the gap).

Built from what the trainers leave in their ModelRun artifacts (history.json,
metrics.json, feature_importance.json); writes PNGs and a Markdown page.
"""

from __future__ import annotations

import json
import os

from trainer.artifacts import HISTORY_FILE, IMPORTANCE_FILE, METRICS_FILE

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _load(path: str) -> dict | None:
    if not path or not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _curves(history: dict, title: str, out_png: str) -> None:
    keys = [k for k in history if k != "grad_norm" and "regularization" not in k and "total_loss" not in k]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for k in keys:
        axes[0].plot(range(1, len(history[k]) + 1), history[k], marker="o", label=k)
    axes[0].set_title(f"{title}: loss and metrics per epoch")
    axes[0].set_xlabel("epoch")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    g = history.get("grad_norm", [])
    axes[1].plot(range(1, len(g) + 1), g, marker="o", color="tab:red")
    axes[1].set_title("global gradient norm (probe batch)")
    axes[1].set_xlabel("epoch")
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


RETRIEVAL_BASELINES = (("popularity", "popularity baseline"), ("als", "ALS baseline (implicit)"))
# What the gates compare (trainer/gate.py): the lines below the table name every loss on these.
VERDICT_METRICS = (("recall@100", "Recall@100"), ("ndcg@10", "NDCG@10"))


def retrieval_table(m: dict) -> list[str]:
    """Ours, popularity and ALS (when ``metrics.json`` has it) on the one eval task, as Markdown rows."""
    rows = ["| model | Recall@10 | Recall@50 | Recall@100 | NDCG@10 |", "|---|---|---|---|---|"]
    for name, label in (("model", "two-tower (ours)"), *RETRIEVAL_BASELINES):
        r = m.get(name)
        if r is None:
            continue  # a metrics.json written before the ALS baseline existed
        if "unavailable" in r:
            rows.append(f"| {label} | unavailable: {r['unavailable']} | | | |")
            continue
        rows.append(f"| {label} | {r['recall@10']:.4f} | {r['recall@50']:.4f} | {r['recall@100']:.4f} | {r['ndcg@10']:.4f} |")
    return rows


def retrieval_verdicts(m: dict) -> list[str]:
    """Plain lines: where ours loses to a baseline (with the gap), or that it beats them all."""
    ours, lines, compared = m["model"], [], []
    for name, label in RETRIEVAL_BASELINES:
        r = m.get(name)
        if r is None or "unavailable" in r:
            if r is not None:
                lines.append(f"{label} unavailable ({r['unavailable']}): ours was not compared with it")
            continue
        compared.append(label)
        for key, metric in VERDICT_METRICS:
            if ours[key] < r[key]:
                gap = r[key] - ours[key]
                ratio = f", {ours[key] / r[key]:.2f}x" if r[key] > 0 else ""
                lines.append(f"OURS LOSES to the {label} on {metric}: {ours[key]:.4f} vs {r[key]:.4f} "
                             f"(-{gap:.4f}{ratio})")
    if compared and not any(line.startswith("OURS LOSES") for line in lines):
        lines.insert(0, f"ours beats or ties the {' and the '.join(compared)} on "
                        f"{' and '.join(metric for _, metric in VERDICT_METRICS)}")
    return lines


def ranking_table(m: dict) -> list[str]:
    rows = ["| model | RMSE (rating) | AUC (engagement) |", "|---|---|---|"]
    rows.append(f"| DCN-v2 multitask (ours) | {m['model']['rmse']:.4f} | {m['model']['auc']:.4f} |")
    base = m.get("baseline") or {}
    if base:
        rows.append(f"| baseline (global mean / popularity) | {base.get('rmse', float('nan')):.4f} | "
                    f"{base.get('auc', float('nan')):.4f} |")
    return rows


def write_report(out_dir: str, retrieval_run: str | None, ranking_run: str | None, index_report: str | None) -> str:
    os.makedirs(out_dir, exist_ok=True)
    lines = ["# Training diagnosis report", ""]
    for title, run in (("retrieval", retrieval_run), ("ranking", ranking_run)):
        metrics = _load(os.path.join(run, METRICS_FILE)) if run else None
        history = _load(os.path.join(run, HISTORY_FILE)) if run else None
        lines += [f"## {title}", f"run: `{run}`", ""]
        if metrics and title == "retrieval":
            lines += retrieval_table(metrics) + [""] + [f"- {v}" for v in retrieval_verdicts(metrics)] + [""]
        elif metrics:
            lines += ranking_table(metrics) + [""]
        if history:
            png = os.path.join(out_dir, f"{title}_curves.png")
            _curves(history, title, png)
            lines += [f"![{title} curves]({os.path.basename(png)})", ""]
        importance = _load(os.path.join(run, IMPORTANCE_FILE)) if run else None
        if importance:
            lines += ["Permutation feature importance (eval split):", "", "| feature | " + " | ".join(
                next(iter(importance.values())).keys()) + " |", "|---|" + "---|" * len(next(iter(importance.values())))]
            for feat, vals in sorted(importance.items(), key=lambda kv: -abs(list(kv[1].values())[0])):
                lines.append(f"| {feat} | " + " | ".join(f"{v:.4f}" for v in vals.values()) + " |")
            lines.append("")
    idx = _load(index_report) if index_report else None
    if idx:
        lines += ["## ScaNN index", f"recall@10 vs exact search: {idx['recall@10']:.4f} (floor {idx['recall_floor']}), "
                  f"{idx['num_candidates']} candidates, params {idx['params']}", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    return path
