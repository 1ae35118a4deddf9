"""Feasibility check of a popularity prior at scoring time (not in the model yet).

    python -m bench.popularity_prior_check --config configs/movielens_1m.yaml --split global_time

Trains the retrieval model with the config's defaults on the pipeline's data half for the split
(run `bench.ablation` for that split first: it builds and caches it), selects its epoch on the
validation split and does **not** refit. It then scores validation and eval as
``q . c + beta * temperature * log p(item)`` (``p`` from train counts, +1 smoothed; the fit
split's for validation, all of train's for eval) for a grid of ``beta`` and prints both. The
beta a model would ship with is the validation-best one (marked); eval figures at the other
betas are printed for the record, never to choose. Without the refit the figures are not the
trainer's (README "Model selection": the refit uses the validation rows too).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

GRID = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/movielens_100k.yaml")
    parser.add_argument("--split", choices=["per_user", "global_time", "leave_last_one"], default="per_user")
    args = parser.parse_args(argv)

    from bench.ablation import _latest
    from tfx_pipeline import component_ids as ids
    from tfx_pipeline.config import load_config
    from trainer import artifacts, features as F, skeleton
    from trainer.hparams import SelectionConfig, sections, trainer_config
    from trainer.retrieval import metrics as M
    from trainer.retrieval.sequence import event_columns
    from trainer.retrieval.train import RECIPE, ValidationRetrieval, interactions

    base = load_config(args.config)
    cfg = load_config(args.config, {"name": f"{base.name}_{args.split}", "examples": {"split": {"strategy": args.split}}})
    examples = _latest(cfg.root, ids.EXAMPLE_BUILDER, "examples")
    transform = _latest(cfg.root, ids.TRANSFORM, "transform_graph")
    tc = trainer_config(sections(base.trainer))
    data = skeleton.load_data(examples, transform, cfg.side_features(), cfg.examples.history_length,
                              RECIPE.raw_keys(cfg.side_features()), tc.retrieval.seed, cfg.examples.split,
                              tc.selection, cfg.examples.state_length)
    started = time.time()
    result = skeleton.fit_and_evaluate(RECIPE, data, tc.retrieval, dataclasses.replace(tc.selection, refit=False),
                                       evaluate=False, verbose=0)
    model, hp = result.model, result.hp
    print(f"[prior] selected epoch {result.selection['best_epoch']} of {result.selection['epochs_run']} "
          f"({time.time() - started:.0f} s), no refit", flush=True)

    val = ValidationRetrieval(data, model, "recall@100")
    fit_counts = np.zeros(data.layout.num_items)
    np.add.at(fit_counts, event_columns(data.fit.rows, [F.ITEM_ID_IDX])[F.ITEM_ID_IDX], 1)
    rows = np.asarray(val.item_inputs[F.ITEM_ID_IDX]).astype(int)
    log_p = np.log((fit_counts[rows] + 1) / (fit_counts.sum() + len(fit_counts)))
    q = model.query_tower(val.queries, training=False).numpy()[val.position]
    c = model.candidate_tower(val.item_inputs, training=False).numpy()
    picked = None
    for beta in GRID:
        bias = beta * hp.temperature * log_p
        m = M.evaluate_scores(val.task, lambda r: q[r] @ c.T + bias[None, :], ks=(10, 100))
        print(f"[prior] validation beta {beta}: recall@100 {m['recall@100']:.4f} ndcg@10 {m['ndcg@10']:.4f}", flush=True)
        if picked is None or m["recall@100"] > picked[1]:
            picked = (beta, m["recall@100"])

    quiet = dataclasses.replace(tc, evaluation=dataclasses.replace(tc.evaluation, enabled=False))
    ev = RECIPE.evaluate(data, model, hp, None, quiet)
    cands = ev.state["candidates"]
    task = M.build_eval_task(interactions(data.train.raw), interactions(data.eval.raw), cands["ids"])
    counts = np.asarray(cands["counts"], np.float64)
    log_p = np.log((counts + 1) / (counts.sum() + len(counts)))
    qe, emb = ev.run_files[artifacts.EVAL_QUERIES_FILE], cands["embeddings"]
    for name in ("popularity", "als"):
        m = ev.metrics.get(name) or {}
        if "recall@100" in m:
            print(f"[prior] eval {name}: recall@100 {m['recall@100']:.4f} ndcg@10 {m['ndcg@10']:.4f}")
    for beta in GRID:
        bias = beta * hp.temperature * log_p
        m = M.evaluate_scores(task, lambda r: qe[r] @ emb.T + bias[None, :], ks=(10, 100))
        mark = " (the validation pick)" if beta == picked[0] else ""
        print(f"[prior] eval beta {beta}{mark}: recall@100 {m['recall@100']:.4f} ndcg@10 {m['ndcg@10']:.4f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
