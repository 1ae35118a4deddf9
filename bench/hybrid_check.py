"""Feasibility check of a hybrid score, two-tower + w * ALS, weight picked on validation (not in the model).

    python -m bench.hybrid_check --config configs/movielens_100k.yaml --split per_user

Trains the retrieval model with the config's defaults on the pipeline's data half for the split
(run ``bench.ablation`` for that split first: it builds and caches it), selects its epoch and
popularity prior on validation and does **not** refit. ALS (the trainer's classical baseline,
``trainer.baseline``) is fit on the fit split for validation and on all of train for eval. The
hybrid scores ``q . c + bias + w * (u_als . v_als)`` for known users (cold users keep the
two-tower score: ALS has no vector for them); one dot product, so it could be served as one
more block of dimensions. ``w`` is picked on validation (marked); eval at every ``w`` is
printed for the record, never to choose.
"""

from __future__ import annotations

import argparse

GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/movielens_100k.yaml")
    parser.add_argument("--split", choices=["per_user", "global_time", "leave_last_one"], default="per_user")
    args = parser.parse_args(argv)

    from bench.popularity_prior_check import eval_parts, selected_model
    from trainer.retrieval import classical, metrics as M, prior
    from trainer.retrieval.train import ValidationRetrieval, interactions

    tc, data, result = selected_model(args.config, args.split, "hybrid")
    hp = result.hp

    def als_part(train_events, task):
        fit = classical.fit_als(train_events, task, tc.baseline)
        known = fit.data.task_user_rows >= 0

        def score(rows):
            s = fit.score(rows)
            s[~known[rows]] = 0.0  # cold users: the two-tower score alone
            return s
        return score, fit

    val = ValidationRetrieval(data, result.model, "recall@100")
    q, c = val.vectors()
    bias = prior.item_bias(val.fit_counts, hp.popularity_prior, hp.temperature)
    als, fit = als_part(interactions(data.fit.raw), val.task)
    print(f"[hybrid] validation ALS alone: {M.evaluate_scores(val.task, fit.score, ks=(10, 100))}")
    picked = None
    for w in GRID:
        m = M.evaluate_scores(val.task, lambda r: q[r] @ c.T + bias[None, :] + w * als(r), ks=(10, 100))
        print(f"[hybrid] validation w {w}: recall@100 {m['recall@100']:.4f} ndcg@10 {m['ndcg@10']:.4f}", flush=True)
        if picked is None or m["recall@100"] > picked[1]:
            picked = (w, m["recall@100"])

    task, qe, cands = eval_parts(tc, data, result, "hybrid")
    emb, eb = cands["embeddings"], cands["bias"]
    als, _ = als_part(interactions(data.train.raw), task)
    for w in GRID:
        m = M.evaluate_scores(task, lambda r: qe[r] @ emb.T + eb[None, :] + w * als(r), ks=(10, 100))
        mark = " (the validation pick)" if w == picked[0] else ""
        print(f"[hybrid] eval w {w}{mark}: recall@100 {m['recall@100']:.4f} ndcg@10 {m['ndcg@10']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
