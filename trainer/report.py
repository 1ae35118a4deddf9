"""The diagnosis report: curves, gradient norms, feature importance, the evaluation table
(retrieval: ours beside the popularity and ALS baselines, and a plain line for every
metric where ours loses to one of them, with the gap), the beyond-accuracy table (with the
retrieved items' popularity distribution against the truth's) and the slice table with
its fairness ratios (metrics.json "beyond_accuracy" and "slices", trainer/retrieval/slices.py).

Built from what the trainers leave in their ModelRun artifacts (history.json,
metrics.json, feature_importance.json); writes PNGs and a Markdown page.
"""

from __future__ import annotations

import json
import os

from trainer.artifacts import HISTORY_FILE, IMPORTANCE_FILE, IMPORTANCE_SAMPLE_FILE, METRICS_FILE

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


BA_MODELS = (("model", "ours"), ("popularity", "popularity"), ("als", "ALS"))


def report_k(m: dict) -> int | None:
    """The K of the beyond-accuracy and slice tables: the configured one, else the smallest evaluated."""
    ba = m.get("beyond_accuracy") or {}
    params = ba.get("params") or {}
    ks = params.get("ks") or []
    if not ks or not any(name in ba for name, _ in BA_MODELS):  # no evaluated user: nothing to show
        return None
    return params.get("report_k") if params.get("report_k") in ks else min(ks)


def _num(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _available(m: dict) -> list[tuple[str, str]]:
    """(key, label) of the models with beyond-accuracy figures (ALS may be unavailable)."""
    ba = m.get("beyond_accuracy") or {}
    return [(key, label) for key, label in BA_MODELS if key in ba]


def beyond_accuracy_table(m: dict) -> list[str]:
    """Accuracy beyond recall, coverage, novelty, diversity and popularity bias at the report K,
    ours vs the baselines, with the relevant (truth) items where a figure applies to them."""
    k = report_k(m)
    if k is None:
        return []
    ba, models = m["beyond_accuracy"], _available(m)
    truth = ba.get("truth") or {}
    feature = (ba.get("params") or {}).get("item_feature")
    rows = ["| metric | " + " | ".join(label for _, label in models) + " | relevant items |",
            "|---|" + "---|" * (len(models) + 1)]

    def row(label: str, source: str, key: str, truth_key: str | None = None, digits: int = 4) -> None:
        values = [(m.get(name) or {}).get(key) if source == "accuracy" else ba[name].get(key) for name, _ in models]
        if all(v is None for v in values) and source != "accuracy":
            return
        rows.append(f"| {label} | " + " | ".join(_num(v, digits) for v in values)
                    + f" | {_num(truth.get(truth_key), digits) if truth_key else ''} |")

    for name, label in (("precision", "Precision"), ("f1", "F1"), ("mrr", "MRR"), ("hit_rate", "HitRate")):
        row(f"{label}@{k}", "accuracy", f"{name}@{k}")
    row(f"catalogue coverage@{k}", "ba", f"coverage@{k}")
    row(f"novelty@{k} (bits)", "ba", f"novelty@{k}", digits=2)
    row(f"diversity@{k}, embeddings (cosine distance)", "ba", f"diversity_embedding@{k}")
    if feature:
        row(f"diversity@{k}, {feature} (Jaccard distance)", "ba", f"diversity_feature@{k}")
    row(f"mean train popularity@{k}", "ba", f"mean_popularity@{k}", "truth_popularity", digits=1)
    row(f"popularity ratio@{k} (vs relevant items)", "ba", f"popularity_ratio@{k}", digits=2)
    for bucket in ("head", "torso", "tail"):
        row(f"{bucket} items' share@{k}", "ba", f"{bucket}_share@{k}", f"truth_{bucket}_share")
    return rows


def _slice_rows(name: str, groups: dict, models: list, keys: list[str]) -> list[str]:
    out = []
    for group, e in groups.items():
        cells = [_num((e.get(model) or {}).get(key)) for key in keys for model, _ in models]
        out.append(f"| {name} | {group} | {e['num_users']} | " + " | ".join(cells) + " |")
    return out


def slice_table(m: dict) -> list[str]:
    """Recall@K and NDCG@K per slice (user activity, relevant-item popularity, user features),
    ours vs the baselines with each group's user count, then one fairness line per user feature."""
    k, sl = report_k(m), m.get("slices")
    if k is None or not sl:
        return []
    models = _available(m)
    keys = [f"recall@{k}", f"ndcg@{k}"]
    rows = ["| slice | group | users | " + " | ".join(f"{key.replace('recall', 'Recall').replace('ndcg', 'NDCG')} "
                                                     f"{label}" for key in keys for _, label in models) + " |",
            "|---|---|---|" + "---|" * (len(keys) * len(models))]
    act = sl.get("user_activity")
    if act:
        rows += _slice_rows(f"activity (cold: <= {act['threshold']} train events)", act["groups"], models, keys)
    items = sl.get("item_popularity")
    if items:
        rows += _slice_rows("relevant items' popularity", items["groups"], models, keys)
    lines = []
    for name, entry in sl.items():
        if not name.startswith("user_feature:"):
            continue
        feature = name.split(":", 1)[1]
        rows += _slice_rows(feature, entry["groups"], models, keys)
        parts = []
        for model, label in models:
            f = (entry.get("fairness") or {}).get(model, {}).get(f"recall@{k}")
            if f:
                parts.append(f"{label} {_num(f['ratio'], 2)}" + (f" ({f['best']} / {f['worst']})" if f["best"] else "")
                             + (f" [{f['why']}]" if f.get("why") else ""))
        lines.append(f"- fairness, {feature}: best / worst group Recall@{k} (groups of >= "
                     f"{entry.get('min_group_users', 1)} users): " + "; ".join(parts))
    return rows + [""] + lines if lines else rows


def beyond_accuracy_line(m: dict) -> str | None:
    """One line for the run summary: coverage, tail share and the cold users' Recall@K, ours vs the baselines."""
    k = report_k(m)
    if k is None:
        return None
    ba, models = m["beyond_accuracy"], _available(m)

    def trio(get) -> str:
        return " / ".join(f"{label} {_num(get(model))}" for model, label in models)

    line = (f"@{k}: coverage {trio(lambda x: ba[x].get(f'coverage@{k}'))}; tail share "
            f"{trio(lambda x: ba[x].get(f'tail_share@{k}'))} (relevant items "
            f"{_num((ba.get('truth') or {}).get('truth_tail_share'))})")
    act = (m.get("slices") or {}).get("user_activity")
    cold = act["groups"].get("cold") if act else None
    if cold and cold["num_users"]:
        line += (f"; cold users ({cold['num_users']}, <= {act['threshold']} train events) Recall@{k} "
                 f"{trio(lambda x: (cold.get(x) or {}).get(f'recall@{k}'))}")
    return line


def ranking_table(m: dict) -> list[str]:
    rows = ["| model | RMSE (rating) | AUC (engagement) |", "|---|---|---|"]
    rows.append(f"| DCN-v2 multitask (ours) | {m['model']['rmse']:.4f} | {m['model']['auc']:.4f} |")
    base = m.get("baseline") or {}
    if base:
        rows.append(f"| baseline (global mean / popularity) | {base.get('rmse', float('nan')):.4f} | "
                    f"{base.get('auc', float('nan')):.4f} |")
    return rows


def importance_heading(sample: dict, metrics: dict | None) -> str:
    """What the permutation importance was computed on, and its base RMSE/AUC beside the whole eval split's."""
    if not sample:  # a run from before feature_importance_sample.json
        return "Permutation feature importance (eval split):"
    whole = (metrics or {}).get("model") or {}
    line = (f"Permutation feature importance on {sample['rows']:,} of {sample.get('eval_rows', 0):,} eval rows "
            f"({sample['selection']}): RMSE {sample['rmse']:.4f}, AUC {sample['auc']:.4f} on them")
    if "rmse" in whole:
        line += (f" vs {whole['rmse']:.4f} / {whole['auc']:.4f} on the whole eval split (the table above): "
                 "the increases below are against the sample's own figures")
    return line + ":"


def write_report(out_dir: str, retrieval_run: str | None, ranking_run: str | None, index_report: str | None) -> str:
    os.makedirs(out_dir, exist_ok=True)
    lines = ["# Training diagnosis report", ""]
    for title, run in (("retrieval", retrieval_run), ("ranking", ranking_run)):
        metrics = _load(os.path.join(run, METRICS_FILE)) if run else None
        history = _load(os.path.join(run, HISTORY_FILE)) if run else None
        lines += [f"## {title}", f"run: `{run}`", ""]
        if metrics and title == "retrieval":
            lines += retrieval_table(metrics) + [""] + [f"- {v}" for v in retrieval_verdicts(metrics)] + [""]
            if report_k(metrics) is not None:
                k = report_k(metrics)
                lines += [f"### Beyond accuracy (K = {k})", "",
                          "Definitions: README \"Beyond accuracy and slices\". Diversity on embeddings uses ours "
                          "for every model; popularity is the train interaction count; head / torso / tail: the "
                          "items making the first "
                          f"{metrics['beyond_accuracy']['params'].get('head_share', 0.5):.0%} / up to "
                          f"{metrics['beyond_accuracy']['params'].get('tail_share', 0.8):.0%} / the rest of the "
                          "train interactions.", ""]
                lines += beyond_accuracy_table(metrics) + [""]
                lines += [f"### Slices (K = {k})", ""] + slice_table(metrics) + [""]
        elif metrics:
            lines += ranking_table(metrics) + [""]
        if history:
            png = os.path.join(out_dir, f"{title}_curves.png")
            _curves(history, title, png)
            lines += [f"![{title} curves]({os.path.basename(png)})", ""]
        importance = _load(os.path.join(run, IMPORTANCE_FILE)) if run else None
        if importance:
            sample = _load(os.path.join(run, IMPORTANCE_SAMPLE_FILE)) or {}
            lines += [importance_heading(sample, metrics), "", "| feature | " + " | ".join(
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
