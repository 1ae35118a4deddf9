"""Plug-in for bench/quality.py: the project's own TFRS retrieval model, default config.

    python -m bench.quality --config configs/movielens_100k.yaml --split both --plugin bench.ours

Runs the pipeline's data half for the same split (trainer/splits.py, the
function the baselines' split uses too), trains the retrieval model with the
config's trainer settings, and scores the catalogue with the exported candidate
embeddings and the held-out query embeddings (each user's state at their first
eval event), so the same metric code ranks it beside the baselines.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from bench.baselines import register


@register("tfrs_two_tower_ours")
def tfrs_two_tower_ours(train_events, task, bcfg):
    """The pipeline's default: epochs selected on a validation split carved from train, then refit."""
    return _ours(train_events, task, bcfg, {})


@register("ours_no_refit")
def ours_no_refit(train_events, task, bcfg):
    """Selected on validation, the model trained without the validation rows kept (no refit)."""
    return _ours(train_events, task, bcfg, {"selection": {"refit": False}})


@register("ours_fixed_epochs")
def ours_fixed_epochs(train_events, task, bcfg):
    """No validation split: the configured epochs, no early stopping."""
    return _ours(train_events, task, bcfg, {"selection": {"validation": False}})


def _keep_metrics(metrics: dict, name: str) -> None:
    """The trainer's own metrics.json (model vs popularity vs ALS, slices, beyond accuracy) and its
    slice table, kept in bench/results: the report's tables for a benchmark run."""
    import json
    from pathlib import Path

    from trainer.report import slice_table

    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ours_{name}_metrics.json").write_text(json.dumps(metrics, indent=2))
    table = slice_table(metrics)
    if table:
        (out / f"ours_{name}_slices.md").write_text("\n".join(table) + "\n")
    print(f"[ours] trainer metrics and slice table in {out}/ours_{name}_*", flush=True)


def _ours(train_events, task, bcfg, trainer_overrides: dict):
    import tensorflow as tf

    from tfx_pipeline import component_ids as ids
    from tfx_pipeline.config import deep_merge, load_config
    from tfx_pipeline.local_runner import run_local
    from tfx_pipeline.summary import latest
    from trainer.artifacts import EVAL_QUERIES_FILE, EVAL_QUERY_USERS_FILE
    from trainer.retrieval.export import served_vectors
    from trainer.retrieval.train import train_and_export

    base = bcfg.pipeline
    split = bcfg.extra["split"]
    # The benchmark's --set overrides, then this split and this variant's trainer settings.
    overrides = deep_merge(bcfg.extra.get("overrides", {}),
                           {"name": f"{base.name}_{split}", "examples": {"split": {"strategy": split}},
                            "trainer": trainer_overrides})
    cfg = load_config(base.source_path, overrides)
    run_local(cfg, stage="data")
    examples = latest(cfg.root, ids.EXAMPLE_BUILDER, "examples")
    transform = latest(cfg.root, ids.TRANSFORM, "transform_graph")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_and_export(examples, transform, os.path.join(tmp, "serving"), os.path.join(tmp, "run"),
                                   cfg.side_features(), cfg.examples.history_length, cfg.trainer,
                                   split=cfg.examples.split, sequence_length=cfg.examples.state_length)
        _keep_metrics(metrics, cfg.name)
        model = tf.saved_model.load(os.path.join(tmp, "serving"))
        # What the export's top-k layer indexes: [c, ALS v, prior bias] (trainer/retrieval/export.py).
        served = served_vectors(model)
        scales = model.prior_scales.numpy() if hasattr(model, "prior_scales") else np.ones(2, np.float32)
        edges = model.prior_edges.numpy() if hasattr(model, "prior_edges") else np.array([1])
        # The history the served query reads (trainer.retrieval.train.model_history_length).
        cap = (cfg.examples.state_length if cfg.trainer.retrieval.objective == "sequence"
               else cfg.examples.history_length)
        ids = [i.decode() for i in model.candidate_ids.numpy()]
        queries = np.load(os.path.join(tmp, "run", EVAL_QUERIES_FILE))  # [q, w u], as served less the 1
        users = np.load(os.path.join(tmp, "run", EVAL_QUERY_USERS_FILE))
    col = {i: j for j, i in enumerate(ids)}
    cand = np.zeros((task.num_items, served.shape[1]), np.float32)
    for j, item in enumerate(task.item_ids):
        if item in col:
            cand[j] = served[col[item]]
    row = {u: r for r, u in enumerate(users)}
    missing = [u for u in task.user_ids if u not in row]
    if missing:
        raise ValueError(f"{len(missing)} eval users have no query embedding (e.g. {missing[:3]}); "
                         "the plug-in needs the full dataset (not --smoke)")
    q = queries[[row[u] for u in task.user_ids]]
    # [q, w u, s] . [c, v, bias]; s: the prior's scale of the user's activity bucket (train items,
    # capped at the history the query reads; 0: cold).
    from trainer.retrieval.prior import activity_buckets, task_activity

    buckets = activity_buckets(task_activity(task, cap), edges)
    q = np.concatenate([q, scales[buckets].astype(np.float32)[:, None]], axis=1)
    return lambda rows: q[rows] @ cand.T
