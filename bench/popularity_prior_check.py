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

GRID = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def selected_model(config: str, split: str, tag: str):
    """The config's retrieval model on the cached data half for ``split``, its epoch (and popularity
    prior) selected on validation, ALS blend off, **no refit**: (trainer config, TrainingData,
    skeleton.Result)."""
    from bench.ablation import _latest
    from tfx_pipeline import component_ids as ids
    from tfx_pipeline.config import load_config
    from trainer import skeleton
    from trainer.hparams import sections, trainer_config
    from trainer.retrieval.train import RECIPE

    base = load_config(config)
    cfg = load_config(config, {"name": f"{base.name}_{split}", "examples": {"split": {"strategy": split}}})
    examples = _latest(cfg.root, ids.EXAMPLE_BUILDER, "examples")
    transform = _latest(cfg.root, ids.TRANSFORM, "transform_graph")
    tc = trainer_config(sections(base.trainer))
    # The prior alone: the ALS blend (picked after it by the trainer) is off here.
    tc = dataclasses.replace(tc, retrieval=dataclasses.replace(tc.retrieval, als_blend=0.0))
    data = skeleton.load_data(examples, transform, cfg.side_features(), cfg.examples.history_length,
                              RECIPE.raw_keys(cfg.side_features()), tc.retrieval.seed, cfg.examples.split,
                              tc.selection, cfg.examples.state_length)
    started = time.time()
    result = skeleton.fit_and_evaluate(RECIPE, data, tc.retrieval, dataclasses.replace(tc.selection, refit=False),
                                       evaluate=False, verbose=0)
    print(f"[{tag}] selected epoch {result.selection['best_epoch']} of {result.selection['epochs_run']}, "
          f"prior {result.hp.popularity_prior} ({time.time() - started:.0f} s), no refit", flush=True)
    return tc, data, result


def eval_parts(tc, data, result, tag: str):
    """The trainer's evaluation of ``result.model`` (without the beyond-accuracy analysis), its
    baselines printed: (eval task, eval query embeddings, candidates dict)."""
    from trainer import artifacts
    from trainer.retrieval import metrics as M
    from trainer.retrieval.train import RECIPE, interactions

    quiet = dataclasses.replace(tc, evaluation=dataclasses.replace(tc.evaluation, enabled=False))
    ev = RECIPE.evaluate(data, result.model, result.hp, None, quiet)
    cands = ev.state["candidates"]
    task = M.build_eval_task(interactions(data.train.raw), interactions(data.eval.raw), cands["ids"])
    for name in ("popularity", "als"):
        m = ev.metrics.get(name) or {}
        if "recall@100" in m:
            print(f"[{tag}] eval {name}: recall@100 {m['recall@100']:.4f} ndcg@10 {m['ndcg@10']:.4f}")
    return task, ev.run_files[artifacts.EVAL_QUERIES_FILE], cands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/movielens_100k.yaml")
    parser.add_argument("--split", choices=["per_user", "global_time", "leave_last_one"], default="per_user")
    args = parser.parse_args(argv)

    from trainer.retrieval import metrics as M, prior
    from trainer.retrieval.train import ValidationRetrieval

    tc, data, result = selected_model(args.config, args.split, "prior")
    hp = result.hp
    val = ValidationRetrieval(data, result.model, "recall@100")
    q, c = val.vectors()
    picked = None
    for beta in GRID:
        bias = prior.item_bias(val.fit_counts, beta, hp.temperature)
        m = M.evaluate_scores(val.task, lambda r: q[r] @ c.T + bias[None, :], ks=(10, 100))
        print(f"[prior] validation beta {beta}: recall@100 {m['recall@100']:.4f} ndcg@10 {m['ndcg@10']:.4f}", flush=True)
        if picked is None or m["recall@100"] > picked[1]:
            picked = (beta, m["recall@100"])

    task, qe, cands = eval_parts(tc, data, result, "prior")
    emb = cands["embeddings"]
    for beta in GRID:
        bias = prior.item_bias(cands["counts"], beta, hp.temperature)
        m = M.evaluate_scores(task, lambda r: qe[r] @ emb.T + bias[None, :], ks=(10, 100))
        mark = " (the validation pick)" if beta == picked[0] else ""
        print(f"[prior] eval beta {beta}{mark}: recall@100 {m['recall@100']:.4f} ndcg@10 {m['ndcg@10']:.4f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
