"""The diagnosis report: training curves (the train and validation loss per example on one
scale, the validation selection metric with the selected epoch, gradient norms: ``curve_panels``),
feature importance, the evaluation table
(retrieval: ours beside the popularity and ALS baselines, and a plain line for every
metric where ours loses to one of them, with the gap), the beyond-accuracy table (with the
retrieved items' popularity distribution against the truth's) and the slice table with
its fairness ratios (metrics.json "beyond_accuracy" and "slices", trainer/retrieval/slices.py), and
the retrieval diagnosis (metrics.json "diagnosis", trainer/retrieval/diagnosis.py: candidate norms vs
popularity with a plot from candidate_norms.npy, the retrieved items' popularity deciles, the query
inputs' permutation importance).

Built from what the trainers leave in their ModelRun artifacts (history.json,
metrics.json, feature_importance.json) and, for the ranking model's per-slice RMSE / AUC, from
the RankingGate's (TFX Evaluator's) evaluation artifact (TFMA's metrics file); writes PNGs, a
Markdown page and the same content as one self-contained HTML page. The tables are built once
as data (trainer/report_doc.py) and rendered both ways; the ``*_table`` functions give their
Markdown rows.
"""

from __future__ import annotations

import os

from serving.fileio import gfile, is_uri, load_npy, read_json, write_text
from trainer.artifacts import CANDIDATE_NORMS_FILE, HISTORY_FILE, IMPORTANCE_FILE, IMPORTANCE_SAMPLE_FILE, METRICS_FILE
from trainer.report_doc import (BAD, BEATS, GOOD, LOSS, Block, Bullets, Cell, Heading, Image, Table, Text, beaten,
                                markdown, marks, md_rows)
from trainer.report_html import write_html
from trainer.report_stats import statistics_blocks

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _load(path: str) -> dict | None:
    if not path or not gfile.exists(path):
        return None
    return read_json(path)


def _save_png(fig, out_png: str) -> None:
    """``fig.savefig(out_png, dpi=90)`` through tf.io.gfile (a local path or a URI)."""
    with gfile.GFile(out_png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)


PER_EXAMPLE = ("loss_per_example", "val_loss_per_example")
KERAS_LOSS = ("loss", "val_loss")


def _series(history: dict) -> dict[str, list[float]]:
    """history.json's per-epoch series (``loss_scale`` and any other non-list entry left out)."""
    return {k: [float("nan") if x is None else float(x) for x in v] for k, v in history.items()
            if isinstance(v, list) and all(isinstance(x, (int, float)) or x is None for x in v)}


def _is_loss(key: str) -> bool:
    return key in PER_EXAMPLE or key in KERAS_LOSS or "regularization" in key or "total_loss" in key


def selection_point(history: dict, metrics: dict | None) -> tuple[str | None, int | None, float | None]:
    """(the validation selection metric's history key, the selected epoch, its value): from
    metrics.json's ``selection`` when its metric is in the history; else the first ``val_*``
    metric there, without a selected epoch; (None, None, None) without validation figures."""
    series = _series(history)
    sel = (metrics or {}).get("selection") or {}
    if sel.get("validation") and sel.get("metric") in series:
        return sel["metric"], sel.get("best_epoch"), sel.get("best_value")
    if sel and not sel.get("validation"):
        return None, None, None
    key = next((k for k in series if k.startswith("val_") and not _is_loss(k)), None)
    return key, None, None


def _at(values: list[float], epoch: int | None) -> str:
    return _num(values[epoch - 1]) if epoch and 0 < epoch <= len(values) else "n/a"


def curve_panels(history: dict, metrics: dict | None) -> list[tuple[str, list[str], str, str]]:
    """The curves' panels, left to right: (title, history keys, y scale, caption line)."""
    series, scale = _series(history), history.get("loss_scale") or {}
    key, best, value = selection_point(history, metrics)
    panels = []
    if "loss_per_example" in series:
        keys = [k for k in PER_EXAMPLE if k in series]
        approx = "approximate, " if scale.get("per_example") == "approximate" else ""
        val = "val_loss_per_example" in series
        at = (f" At the selected epoch {best}: train {_at(series['loss_per_example'], best)}"
              + (f", validation {_at(series['val_loss_per_example'], best)}." if val else ".")) if best else ""
        panels.append(("loss per example", keys, "linear", (
            f"Loss per example ({approx}" + ("train and validation on one scale, " if val else "")
            + "linear): train = the mean over each epoch's training batches (weights moving during the epoch, "
            "training mode); " + ("validation = after the epoch, inference mode." if val else
                                  "no validation loss: the run had no validation batches.")
            + f" How: {scale.get('how', 'not recorded')}.{at}"
            + " Keras' own loss and val_loss in history.json are each pass's LAST batch's loss, not plotted.")))
    elif any(k in series for k in KERAS_LOSS):
        why = (f" ({scale['how']})" if scale.get("how") else
               " (this history.json has no loss_per_example: written before it was recorded)")
        panels.append(("loss as Keras logged it", [k for k in KERAS_LOSS if k in series], "log", (
            "loss and val_loss as Keras logged them, NOT on one scale (log scale): for these tfrs models each is "
            "the LAST batch's loss of the epoch's training and of its validation pass, not a mean over the "
            "batches; the in-batch softmax loss (retrieval) is a sum over that batch's rows, and the last validation batch "
            f"is usually partial{why}.")))
    if key is not None:
        what = (" val_loss is Keras' figure: the last validation batch's loss, not a mean over the validation "
                "split." if key == "val_loss" else "")
        if not best:
            chosen = " No selected epoch recorded (metrics.json has no selection)."
        elif ((metrics or {}).get("selection") or {}).get("refit"):
            chosen = (f" The star marks the selected epoch {best} ({key} {_num(value)}); the exported model was "
                      f"then retrained on all of train for {best} epoch(s).")
        else:
            chosen = (f" The star marks the selected epoch {best} ({key} {_num(value)}), whose weights early "
                      "stopping restored for the exported model.")
        panels.append((f"validation {key[4:] if key.startswith('val_') else key} (selection)", [key], "linear", (
            f"{key} per epoch (linear scale), on the validation split carved off train (never the eval split), "
            f"after each epoch: the figure early stopping selects on.{chosen}{what}")))
    others = [k for k in series if not _is_loss(k) and k != key and not k.startswith("grad_norm")]
    if others:
        panels.append(("other metrics", others, "linear", (
            f"{', '.join(others)} (linear scale): figures without val_ accumulate over the epoch's training "
            "batches (training mode, weights moving); val_ ones are over the validation split after the epoch.")))
    groups = [k for k in series if k.startswith("grad_norm/")]
    if "grad_norm" in series or groups:
        reduction = {"sum": f"a sum over the probe batch's {scale.get('train_batch_rows')} rows, so it grows with "
                            "the batch size", "mean": "a mean over its rows"}.get(scale.get("reduction"))
        panels.append(("gradient norm (probe batch)", [k for k in ("grad_norm", *groups) if k in series], "log", (
            "Gradient L2 norm of the training loss" + (f" ({reduction})" if reduction else "")
            + " on one fixed training batch after each epoch, log scale: the global norm"
            + (f" and per top-level layer ({', '.join(g.split('/', 1)[1] for g in groups)})" if groups else "")
            + ".")))
    return panels


def _curves(history: dict, metrics: dict | None, title: str, out_png: str) -> tuple[str, ...]:
    """One PNG, a panel per :func:`curve_panels` entry; returns the caption lines."""
    panels, series = curve_panels(history, metrics), _series(history)
    key, best, value = selection_point(history, metrics)
    labels = {"loss_per_example": "train (loss_per_example)", "grad_norm": "global (grad_norm)",
              "val_loss_per_example": "validation (val_loss_per_example)"}
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.6), squeeze=False)
    for ax, (name, keys, yscale, _) in zip(axes[0], panels):
        for k in keys:
            v = series[k]
            style = {"color": "tab:red", "linewidth": 2.2} if k == "grad_norm" and len(keys) > 1 else {}
            ax.plot(range(1, len(v) + 1), v, marker="o", markersize=3, label=labels.get(k, k), **style)
        if best:
            ax.axvline(best, color="grey", linestyle=":", linewidth=1)
        if key in keys and best and value is not None:
            ax.plot([best], [value], marker="*", markersize=14, color="tab:green", linestyle="none",
                    label=f"selected: epoch {best}")
        ax.set_title(f"{title}: {name}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale(yscale)
        ax.legend(fontsize=6)
    fig.tight_layout()
    _save_png(fig, out_png)
    plt.close(fig)
    lines = [f"({i}) {name}: {caption}" for i, (name, _, _, caption) in enumerate(panels, 1)]
    if best:
        lines.append(f"The dotted line in every panel marks the selected epoch ({best}).")
    return tuple(lines)


RETRIEVAL_BASELINES = (("popularity", "popularity baseline"), ("als", "ALS baseline (implicit)"))
RETRIEVAL_COLUMNS = (("recall@10", "Recall@10"), ("recall@50", "Recall@50"), ("recall@100", "Recall@100"),
                     ("ndcg@10", "NDCG@10"))
# What the gates compare (trainer/gate.py): the lines below the table name every loss on these.
VERDICT_METRICS = (("recall@100", "Recall@100"), ("ndcg@10", "NDCG@10"))


def retrieval_rows(m: dict) -> Table:
    """Ours, popularity and ALS (when ``metrics.json`` has it) on the one eval task; ours marked
    ``LOSS`` on every figure a baseline beats, the baseline's marked ``BEATS``."""
    table = Table(["model", *(label for _, label in RETRIEVAL_COLUMNS)])
    ours = m.get("model") or {}
    compared = [m[name] for name, _ in RETRIEVAL_BASELINES if m.get(name) is not None and "unavailable" not in m[name]]
    for name, label in (("model", "two-tower (ours)"), *RETRIEVAL_BASELINES):
        r = m.get(name)
        if r is None:
            continue  # a metrics.json written before the ALS baseline existed
        if "unavailable" in r:
            table.rows.append([Cell(label), Cell(f"unavailable: {r['unavailable']}", span=len(RETRIEVAL_COLUMNS))])
            continue
        cells = [Cell(label)]
        for key, _ in RETRIEVAL_COLUMNS:
            if name == "model":
                mark = marks(r[key], [b.get(key) for b in compared])[0]
            else:
                mark = BEATS if beaten(ours.get(key), r[key]) else ""
            cells.append(Cell(f"{r[key]:.4f}", mark))
        table.rows.append(cells)
    return table


def retrieval_table(m: dict) -> list[str]:
    """:func:`retrieval_rows` as Markdown rows."""
    return md_rows(retrieval_rows(m))


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


def prior_line(m: dict) -> str | None:
    """The popularity prior the served scores carry (trainer/retrieval/prior.py): its beta, how it
    was picked (the validation metric per beta) and ours without it on the same eval task."""
    picked = (m.get("selection") or {}).get("popularity_prior")
    if not picked:
        return None  # a metrics.json written before the prior existed
    beta = float(picked.get("beta", 0.0))
    line = f"Popularity prior: {'off' if beta <= 0 else f'beta {beta:g}'} ({picked.get('picked_on', '?')}"
    values = picked.get("validation") or {}
    if values:
        metric = ((m.get("selection") or {}).get("metric") or "validation").removeprefix("val_")
        line += f"; validation {metric} by beta: " + ", ".join(f"{float(b):g}: {v:.4f}" for b, v in values.items())
    elif picked.get("served_value") is not None:
        metric = ((m.get("selection") or {}).get("metric") or "validation").removeprefix("val_")
        line += f"; validation {metric} {picked['served_value']:.4f}"
    line += ")"
    betas, edges = picked.get("betas"), picked.get("edges")
    if betas and edges and any(float(b) != beta for b in betas):
        from trainer.retrieval.prior import bucket_name

        users = picked.get("bucket_users") or []
        own = {int(k) for k in (picked.get("bucket_validation") or {})}
        line += "; by activity (history items): " + ", ".join(
            f"{bucket_name(i, edges)}{' (cold)' if i == 0 else ''} beta {float(b):g}"
            + (f" (own, {users[i]} validation users)" if i in own and i < len(users) else "")
            for i, b in enumerate(betas))
    without = m.get("model_without_prior")
    if without:
        line += (f". Ours without it: Recall@100 {without['recall@100']:.4f}, NDCG@10 {without['ndcg@10']:.4f} "
                 f"(with it: {m['model']['recall@100']:.4f}, {m['model']['ndcg@10']:.4f})")
    return line + "."


def blend_line(m: dict) -> str | None:
    """The ALS blend the served scores carry (trainer/retrieval/als_blend.py): its w, how it was
    picked (the validation metric per w) and ours without it (prior kept) on the same eval task."""
    picked = (m.get("selection") or {}).get("als_blend")
    if not picked:
        return None  # a metrics.json written before the blend existed
    w = float(m.get("als_blend", picked.get("w", 0.0)))
    line = f"ALS blend: {'off' if w <= 0 else f'w {w:g}'} ({picked.get('picked_on', '?')}"
    values = picked.get("validation") or {}
    if values:
        metric = ((m.get("selection") or {}).get("metric") or "validation").removeprefix("val_")
        line += f"; validation {metric} by w: " + ", ".join(f"{float(b):g}: {v:.4f}" for b, v in values.items())
    line += ")"
    without = m.get("model_without_als")
    if without:
        line += (f". Ours without it: Recall@100 {without['recall@100']:.4f}, NDCG@10 {without['ndcg@10']:.4f} "
                 f"(with it: {m['model']['recall@100']:.4f}, {m['model']['ndcg@10']:.4f})")
    return line + "."


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


def _marked(models: list[tuple[str, str]], values: list, higher_is_better: bool | None = True) -> list[str]:
    """Marks for one figure across ``models`` (ours first): see report_doc.marks."""
    if not models or models[0][0] != "model":
        return [""] * len(values)
    own, others = marks(values[0], values[1:], higher_is_better)
    return [own, *others]


def beyond_accuracy_rows(m: dict) -> Table | None:
    """Accuracy beyond recall, coverage, novelty, diversity and popularity bias at the report K,
    ours vs the baselines, with the relevant (truth) items where a figure applies to them. Losses
    are marked where higher is plainly better (not on the popularity-bias rows)."""
    k = report_k(m)
    if k is None:
        return None
    ba, models = m["beyond_accuracy"], _available(m)
    truth = ba.get("truth") or {}
    feature = (ba.get("params") or {}).get("item_feature")
    table = Table(["metric", *(label for _, label in models), "relevant items"])

    def row(label: str, source: str, key: str, truth_key: str | None = None, digits: int = 4,
            higher: bool | None = True) -> None:
        values = [(m.get(name) or {}).get(key) if source == "accuracy" else ba[name].get(key) for name, _ in models]
        if all(v is None for v in values) and source != "accuracy":
            return
        table.rows.append([Cell(label)] + [Cell(_num(v, digits), mark) for v, mark in
                                           zip(values, _marked(models, values, higher))]
                          + [Cell(_num(truth.get(truth_key), digits) if truth_key else "")])

    for name, label in (("precision", "Precision"), ("f1", "F1"), ("mrr", "MRR"), ("hit_rate", "HitRate")):
        row(f"{label}@{k}", "accuracy", f"{name}@{k}")
    row(f"catalogue coverage@{k}", "ba", f"coverage@{k}")
    row(f"novelty@{k} (bits)", "ba", f"novelty@{k}", digits=2)
    row(f"diversity@{k}, embeddings (cosine distance)", "ba", f"diversity_embedding@{k}")
    if feature:
        row(f"diversity@{k}, {feature} (Jaccard distance)", "ba", f"diversity_feature@{k}")
    row(f"mean train popularity@{k}", "ba", f"mean_popularity@{k}", "truth_popularity", digits=1, higher=None)
    row(f"popularity ratio@{k} (vs relevant items)", "ba", f"popularity_ratio@{k}", digits=2, higher=None)
    for bucket in ("head", "torso", "tail"):
        row(f"{bucket} items' share@{k}", "ba", f"{bucket}_share@{k}", f"truth_{bucket}_share", higher=None)
    return table


def beyond_accuracy_table(m: dict) -> list[str]:
    """:func:`beyond_accuracy_rows` as Markdown rows ([] without beyond-accuracy figures)."""
    table = beyond_accuracy_rows(m)
    return md_rows(table) if table else []


def _slice_rows(name: str, groups: dict, models: list, keys: list[str]) -> list[list[Cell]]:
    out = []
    for group, e in groups.items():
        cells = [Cell(str(name)), Cell(str(group)), Cell(str(e["num_users"]))]
        for key in keys:
            values = [(e.get(model) or {}).get(key) for model, _ in models]
            cells += [Cell(_num(v), mark) for v, mark in zip(values, _marked(models, values))]
        out.append(cells)
    return out


def slice_rows(m: dict) -> tuple[Table | None, list[str]]:
    """Recall@K and NDCG@K per slice (user activity, relevant-item popularity, user features),
    ours vs the baselines with each group's user count, and one fairness line per user feature."""
    k, sl = report_k(m), m.get("slices")
    if k is None or not sl:
        return None, []
    models = _available(m)
    keys = [f"recall@{k}", f"ndcg@{k}"]
    table = Table(["slice", "group", "users"] + [f"{key.replace('recall', 'Recall').replace('ndcg', 'NDCG')} {label}"
                                                 for key in keys for _, label in models])
    act = sl.get("user_activity")
    if act:
        table.rows += _slice_rows(f"activity (cold: <= {act['threshold']} train events)", act["groups"], models, keys)
    items = sl.get("item_popularity")
    if items:
        table.rows += _slice_rows("relevant items' popularity", items["groups"], models, keys)
    lines = []
    for name, entry in sl.items():
        if not name.startswith("user_feature:"):
            continue
        feature = name.split(":", 1)[1]
        table.rows += _slice_rows(feature, entry["groups"], models, keys)
        parts = []
        for model, label in models:
            f = (entry.get("fairness") or {}).get(model, {}).get(f"recall@{k}")
            if f:
                parts.append(f"{label} {_num(f['ratio'], 2)}" + (f" ({f['best']} / {f['worst']})" if f["best"] else "")
                             + (f" [{f['why']}]" if f.get("why") else ""))
        lines.append(f"fairness, {feature}: best / worst group Recall@{k} (groups of >= "
                     f"{entry.get('min_group_users', 1)} users): " + "; ".join(parts))
    return table, lines


def slice_table(m: dict) -> list[str]:
    """:func:`slice_rows` as Markdown rows, then a blank line and the fairness lines as a list."""
    table, lines = slice_rows(m)
    if table is None:
        return []
    rows = md_rows(table)
    return rows + [""] + [f"- {line}" for line in lines] if lines else rows


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


def ranking_rows(m: dict) -> Table:
    """Ours vs the baseline on RMSE (lower is better) and AUC, losses marked."""
    table = Table(["model", "RMSE (rating)", "AUC (engagement)"])
    ours, base = m["model"], m.get("baseline") or {}
    rmse, auc = base.get("rmse", float("nan")), base.get("auc", float("nan"))
    (own_rmse, (b_rmse,)), (own_auc, (b_auc,)) = (marks(ours["rmse"], [rmse], False) if base else ("", [""]),
                                                  marks(ours["auc"], [auc]) if base else ("", [""]))
    table.rows.append([Cell("DCN-v2 multitask (ours)"), Cell(f"{ours['rmse']:.4f}", own_rmse),
                       Cell(f"{ours['auc']:.4f}", own_auc)])
    if base:
        table.rows.append([Cell("baseline (global mean / popularity)"), Cell(f"{rmse:.4f}", b_rmse),
                           Cell(f"{auc:.4f}", b_auc)])
    return table


def ranking_table(m: dict) -> list[str]:
    """:func:`ranking_rows` as Markdown rows."""
    return md_rows(ranking_rows(m))


# TFMA's names of the ranking Evaluator's metrics (trainer/gate.py ranking_eval_config) -> ours.
TFMA_RANKING_METRICS = {"example_count": "examples", "root_mean_squared_error": "rmse", "auc": "auc"}


def _slice_value(single) -> str:
    """A TFMA SingleSliceKey's value as text."""
    kind = single.WhichOneof("kind")
    value = getattr(single, kind) if kind else ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def load_ranking_slices(evaluation_uri: str) -> list[dict]:
    """The evaluated model's metrics per slice, from the ranking Evaluator's output (TFMA's
    ``metrics`` file in the evaluation artifact, read with ``tfma.load_metrics``): one dict per
    slice, {"feature": the example key (None: the overall slice), "value": its value as text
    (None: overall), "examples", "rmse", "auc" (each None when TFMA has none)}, the overall slice
    first, then by feature and value. The latest blessed model's metrics and the changes against
    it (the baseline's and the diff keys) are left out. Raises when the metrics cannot be read."""
    import tensorflow_model_analysis as tfma

    from trainer.gate import RANKING_CANDIDATE

    rows = []
    for sliced in tfma.load_metrics(evaluation_uri):
        keys = list(sliced.slice_key.single_slice_keys)
        if len(keys) > 1:
            continue  # crossed slices: the config makes none
        row = {"feature": keys[0].column if keys else None, "value": _slice_value(keys[0]) if keys else None,
               **{name: None for name in TFMA_RANKING_METRICS.values()}}
        for kv in sliced.metric_keys_and_values:
            key = kv.key
            # "" names the one model of a run without a blessed baseline (TFMA renames it).
            if key.is_diff or key.model_name not in (RANKING_CANDIDATE, "") or key.name not in TFMA_RANKING_METRICS:
                continue
            if kv.value.HasField("double_value"):
                row[TFMA_RANKING_METRICS[key.name]] = float(kv.value.double_value.value)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["feature"] is not None, r["feature"] or "", r["value"] or ""))


def ranking_slice_rows(slices: list[dict]) -> Table:
    """:func:`load_ranking_slices`'s rows as a table: slice, value, examples, RMSE, AUC."""
    table = Table(["slice", "value", "examples", "RMSE (rating)", "AUC (engagement)"])
    for r in slices:
        overall = r["feature"] is None
        examples = "n/a" if r["examples"] is None else f"{r['examples']:,.0f}"
        table.rows.append([Cell("overall (gated)" if overall else r["feature"]), Cell("" if overall else r["value"]),
                           Cell(examples), Cell(_num(r["rmse"])), Cell(_num(r["auc"]))])
    return table


def ranking_slice_blocks(evaluation_uri: str | None) -> list[Block]:
    """The ranking model's per-slice table from the Evaluator's output; a line saying why when
    it cannot be read; nothing without an evaluation artifact."""
    if not evaluation_uri:
        return []
    blocks: list[Block] = [Heading(3, "Slices (RankingGate, TFMA)")]
    try:
        slices = load_ranking_slices(evaluation_uri)
    except Exception as e:  # noqa: BLE001 - a report is still written without the table
        return blocks + [Text(f"per-slice metrics unavailable ({type(e).__name__}: {e}); evaluation:",
                              code=evaluation_uri)]
    if not slices:
        return blocks + [Text("per-slice metrics unavailable (no metrics in the evaluation); evaluation:",
                              code=evaluation_uri)]
    return blocks + [Text("RMSE and AUC of this model on the eval split, overall and per value of each sliced "
                          "user feature (trainer.evaluation.user_features; trainer/gate.py ranking_slice_features). "
                          "The gate's thresholds apply to the overall slice only; the other rows are reported, not "
                          "gated. Evaluation:", code=evaluation_uri),
                     ranking_slice_rows(slices)]


def importance_rows(importance: dict, first: str = "feature") -> Table:
    """Permutation importance per feature (``first``: the first column's name), the largest first (by
    the first measure's magnitude)."""
    measures = list(next(iter(importance.values())).keys())
    table = Table([first, *measures])
    for feat, vals in sorted(importance.items(), key=lambda kv: -abs(list(kv[1].values())[0])):
        table.rows.append([Cell(feat)] + [Cell(f"{v:.4f}") for v in vals.values()])
    return table


def gate_rows(gates: dict) -> Table:
    """One row per gate: its verdict (marked ``GOOD`` / ``BAD``) and reasons (one per line)."""
    with_uri = any(g.get("uri") for g in gates.values())
    table = Table(["gate", "verdict", "reasons"] + (["artifact"] if with_uri else []))
    for name, g in gates.items():
        blessed = bool(g.get("blessed"))
        table.rows.append([Cell(name), Cell("BLESSED" if blessed else "NOT BLESSED", GOOD if blessed else BAD),
                           Cell("\n".join(str(r) for r in g.get("reasons") or []))]
                          + ([Cell(str(g.get("uri") or ""))] if with_uri else []))
    return table


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


DIAGNOSIS_COLUMNS = (*BA_MODELS, ("truth", "relevant items"))


def _diagnosis(m: dict) -> dict | None:
    d = m.get("diagnosis")
    return d if isinstance(d, dict) and d.get("norms") else None


def norm_lines(m: dict) -> list[str]:
    """What the candidate norms are of, and their Spearman correlation with the train count."""
    d = _diagnosis(m)
    if d is None:
        return []
    norms = d["norms"]
    items = sum(b["items"] for b in norms["buckets"].values())
    if norms.get("measured") == "pre_normalisation":
        what = ("The candidate tower L2-normalises its output, so every served embedding has norm 1 and the scores "
                "are cosines: the norms here are of the vector before that normalisation (the candidate MLP's "
                "output), which the scores never see; they show what the MLP learned, not a bias of the scores.")
    else:
        what = ("No pre-normalisation vector was reachable: the norms are of the candidate tower's output as "
                "served (under an L2-normalising tower all 1).")
    return [what, f"Spearman's rho of candidate norm vs train interaction count over the {items:,} catalogue items: "
                  f"{_num(norms.get('spearman_norm_vs_count'), 3)} (items never seen in train tie at the bottom)."]


def norm_rows(m: dict) -> Table | None:
    """Mean candidate norm per popularity bucket (head / torso / tail), and over the catalogue."""
    d = _diagnosis(m)
    if d is None:
        return None
    norms = d["norms"]
    table = Table(["popularity bucket", "items", "mean candidate norm"])
    for name, b in norms["buckets"].items():
        table.rows.append([Cell(name), Cell(str(b["items"])), Cell(_num(b["mean_norm"]))])
    table.rows.append([Cell("all items"), Cell(str(sum(b["items"] for b in norms["buckets"].values()))),
                       Cell(_num(norms.get("mean_norm")))])
    return table


def _count_range(lo, hi) -> str:
    if lo is None:
        return ""
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def decile_rows(m: dict) -> Table | None:
    """Per popularity decile of the catalogue: its items, their train counts and mean candidate
    norm, and the share of each model's top K (and of the relevant items) in it."""
    d = _diagnosis(m)
    if d is None or not d.get("retrieved_popularity"):
        return None
    rp, decile_norm = d["retrieved_popularity"], d["norms"].get("decile_mean_norm") or []
    k, shares = rp["k"], rp["shares"]
    columns = [(key, label) for key, label in DIAGNOSIS_COLUMNS if key in shares]
    table = Table(["popularity decile", "items", "train count", "share of train interactions", "mean candidate norm",
                   *(f"{label}@{k}" if key != "truth" else label for key, label in columns)])
    for i, row in enumerate(rp["deciles"]):
        values = [(shares[key] or [None] * len(rp["deciles"]))[i] for key, _ in columns]
        table.rows.append([Cell(str(row["decile"])), Cell(str(row["items"])),
                           Cell(_count_range(row["min_count"], row["max_count"])), Cell(_num(row["interaction_share"])),
                           Cell(_num(decile_norm[i] if i < len(decile_norm) else None))]
                          + [Cell(_num(v)) for v in values])
    return table


def retrieval_importance_heading(m: dict) -> str | None:
    """What the retrieval permutation importance was computed on, and the sample's unshuffled Recall@K
    beside the whole eval task's (as the ranking importance heading)."""
    d = _diagnosis(m)
    imp = (d or {}).get("importance")
    if not imp:
        return None
    s = imp["sample"]
    keys = [key for key in s if key.startswith("recall@")]
    label = lambda key: key.replace("recall", "Recall")  # noqa: E731
    line = (f"Permutation importance of the query inputs on {s['users']:,} of {s['eval_users']:,} evaluated users "
            f"({s['selection']}; each group's inputs shuffled across them, {s.get('seconds', 0.0):.1f} s)")
    if not keys:
        return line + ": no evaluated user, nothing to shuffle."
    line += ": " + ", ".join(f"{label(key)} {s[key]:.4f}" for key in keys) + " on them"
    whole = m.get("model") or {}
    if all(key in whole for key in keys):
        line += (" vs " + " / ".join(f"{whole[key]:.4f}" for key in keys) + " on the whole eval task (the table "
                 "above): the drops below are against the sample's own figures")
    return line + ":"


def _norm_plot(path: str, m: dict, out_png: str) -> bool:
    """Candidate norm vs log10(1 + train count), one colour per popularity bucket; False without the data."""
    if not gfile.exists(path):
        return False
    try:
        data = load_npy(path)
    except (OSError, ValueError):
        return False
    if data.ndim != 2 or data.shape[1] < 3 or not len(data):
        return False
    rho = _diagnosis(m)["norms"].get("spearman_norm_vs_count")
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for b, (name, colour) in enumerate(zip(("head", "torso", "tail"), ("tab:red", "tab:orange", "tab:blue"))):
        pick = data[:, 2] == b
        ax.scatter(np.log10(1.0 + data[pick, 0]), data[pick, 1], s=6, alpha=0.5, color=colour, label=name)
    ax.set_xlabel("log10(1 + train interactions)")
    ax.set_ylabel("candidate norm (before L2 normalisation)"
                  if _diagnosis(m)["norms"].get("measured") == "pre_normalisation" else "candidate norm")
    ax.set_title(f"candidate norm vs item popularity (Spearman {_num(rho, 3)})")
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    _save_png(fig, out_png)
    plt.close(fig)
    return True


def diagnosis_blocks(m: dict, run: str | None, out_dir: str) -> list[Block]:
    """The retrieval diagnosis (metrics.json "diagnosis"): norms vs popularity with their plot, the
    retrieved items' popularity deciles, the query inputs' permutation importance; [] without it."""
    d = _diagnosis(m)
    if d is None:
        return []
    blocks: list[Block] = [Heading(3, "Diagnosis"), Text("Candidate embedding norm vs item popularity. "
                                                         + " ".join(norm_lines(m))), norm_rows(m)]
    npy = os.path.join(run, CANDIDATE_NORMS_FILE) if run else ""
    png = os.path.join(out_dir, "retrieval_norms.png")
    if npy and _norm_plot(npy, m, png):
        blocks.append(Image(png, "candidate norm vs item popularity"))
    table = decile_rows(m)
    if table is not None:
        k = d["retrieved_popularity"]["k"]
        blocks += [Text(f"Popularity of what is retrieved vs the relevant items, by popularity decile (decile 1: the "
                        f"most popular tenth of the catalogue's items by train count, ties in catalogue order): the "
                        f"share of each model's top {k} in the decile, averaged over users, beside the relevant "
                        f"items' (the head / torso / tail shares are in the beyond-accuracy table)."), table]
    heading = retrieval_importance_heading(m)
    if heading:
        blocks.append(Text(heading))
        if d["importance"]["groups"]:
            blocks.append(importance_rows(d["importance"]["groups"], "query input group"))
    return blocks


REPORT_TITLE = "Training diagnosis report"


def _run_blocks(out_dir: str, title: str, run: str | None, evaluation: str | None = None) -> list[Block]:
    """One trainer's section: its tables, verdicts, curves (PNG written beside the report), importance;
    ``evaluation``: the ranking Evaluator's output, for the per-slice table."""
    metrics = _load(os.path.join(run, METRICS_FILE)) if run else None
    history = _load(os.path.join(run, HISTORY_FILE)) if run else None
    blocks: list[Block] = [Heading(2, title), Text("run:", code=str(run))]
    if metrics and title == "retrieval":
        blocks += [retrieval_rows(metrics), Bullets([Cell(v, LOSS if v.startswith("OURS LOSES") else "")
                                                     for v in retrieval_verdicts(metrics)])]
        for line in (prior_line(metrics), blend_line(metrics)):
            if line:
                blocks.append(Text(line))
        k = report_k(metrics)
        if k is not None:
            params = metrics["beyond_accuracy"]["params"]
            blocks += [Heading(3, f"Beyond accuracy (K = {k})"),
                       Text("Definitions: README \"Beyond accuracy and slices\". Diversity on embeddings uses ours "
                            "for every model; popularity is the train interaction count; head / torso / tail: the "
                            f"items making the first {params.get('head_share', 0.5):.0%} / up to "
                            f"{params.get('tail_share', 0.8):.0%} / the rest of the train interactions."),
                       beyond_accuracy_rows(metrics)]
            table, fairness = slice_rows(metrics)
            if table is not None:
                blocks += [Heading(3, f"Slices (K = {k})"), table] + ([Bullets(fairness)] if fairness else [])
        blocks += diagnosis_blocks(metrics, run, out_dir)
    elif metrics:
        blocks.append(ranking_rows(metrics))
    if title == "ranking":
        blocks += ranking_slice_blocks(evaluation)
    if history:
        png = os.path.join(out_dir, f"{title}_curves.png")
        blocks.append(Image(png, f"{title} curves", _curves(history, metrics, title, png)))
    importance = _load(os.path.join(run, IMPORTANCE_FILE)) if run else None
    if importance:
        sample = _load(os.path.join(run, IMPORTANCE_SAMPLE_FILE)) or {}
        blocks += [Text(importance_heading(sample, metrics)), importance_rows(importance)]
    return blocks


def write_report(out_dir: str, retrieval_run: str | None, ranking_run: str | None, index_report: str | None,
                 gates: dict | None = None, statistics: str | None = None,
                 ranking_evaluation: str | None = None) -> str:
    """report.md and report.html (trainer/report_html.py: the same content, self-contained) in
    ``out_dir``, with the curves' PNGs; ``gates``: gate name -> {"blessed": bool, "reasons": [str],
    optional "uri"}, shown first when given; ``statistics``: a StatisticsGen artifact's URI, one
    table per split at the end (trainer/report_stats.py); ``ranking_evaluation``: the ranking
    Evaluator's evaluation artifact URI, for the ranking per-slice table. Returns the Markdown page's path."""
    gfile.makedirs(out_dir)
    blocks: list[Block] = [Heading(2, "gate decisions"), gate_rows(gates)] if gates else []
    for title, run, evaluation in (("retrieval", retrieval_run, None), ("ranking", ranking_run, ranking_evaluation)):
        blocks += _run_blocks(out_dir, title, run, evaluation)
    idx = _load(index_report) if index_report else None
    if idx:
        blocks += [Heading(2, "ScaNN index"),
                   Text(f"recall@10 vs exact search: {idx['recall@10']:.4f} (floor {idx['recall_floor']}), "
                        f"{idx['num_candidates']} candidates, params {idx['params']}")]
    blocks += statistics_blocks(statistics)
    path = os.path.join(out_dir, "report.md")
    write_text(path, markdown([Heading(1, REPORT_TITLE), *blocks]))
    where = out_dir.rstrip("/") if is_uri(out_dir) else os.path.abspath(out_dir)
    name = os.path.basename(os.path.dirname(where))  # runs/<name>/report
    write_html(out_dir, blocks, f"{REPORT_TITLE}: {name}",
               [("report directory", where), ("retrieval run", retrieval_run),
                ("ranking run", ranking_run), ("ranking evaluation (TFMA)", ranking_evaluation),
                ("ScaNN index report", index_report),
                ("StatisticsGen statistics", statistics)])
    return path
