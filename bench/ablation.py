"""Retrieval ablation: what the history encoder, content features, context and loss corrections add.

    python -m bench.ablation --config configs/movielens_100k.yaml --split per_user
    python -m bench.ablation --config configs/movielens_100k.yaml --split global_time --variants full,gru

Runs the pipeline's data half (cached after the first time) for the chosen split,
then trains each variant of the retrieval model on the same Transform output and
evaluates it with the one metric implementation (trainer/retrieval/metrics.py:
user-level, seen items excluded, the whole catalogue as candidates). Writes
bench/results/ablation_<dataset>_<split>.{json,md} (and each variant's whole metrics.json in
ablation_<dataset>_<split>_metrics.json) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

VARIANTS: dict[str, dict] = {
    # User id and item id embeddings only, plain in-batch softmax: the TFRS tutorial model.
    "ids_only": dict(use_history=False, use_content_features=False, use_context=False,
                     logq_correction=False, remove_accidental_hits=False),
    "ids+history": dict(use_content_features=False, use_context=False, logq_correction=False,
                        remove_accidental_hits=False),
    "ids+history+content": dict(use_context=False, logq_correction=False, remove_accidental_hits=False),
    "all_features": dict(logq_correction=False, remove_accidental_hits=False),
    "full": dict(),  # all features + logQ correction + accidental-hit removal (the default)
    "full_gru": dict(history_encoder="gru"),
    "full_mean": dict(history_encoder="mean"),
    "full_attention": dict(history_encoder="attention"),
    "full_sasrec": dict(history_encoder="sasrec"),
    # The sequential encoder alone on the history (no user id, features or context): SASRec's setting.
    "sasrec_history_only": dict(history_encoder="sasrec", use_user_id=False, use_content_features=False,
                                use_context=False),
    "full_no_user_id": dict(use_user_id=False),
    "full_mixed_negatives": dict(uniform_negatives=256),
    # Every catalogue item a negative of every row (no sampling, no logQ correction).
    "full_catalogue": dict(negatives="catalogue"),
    # No popularity prior at scoring time (the default picks its beta on validation).
    "full_no_prior": dict(popularity_prior=0.0),
    # No ALS blend (the default picks its w on validation, after the prior).
    "full_no_als_blend": dict(als_blend=0.0),
    # The user id replaced by the OOV row on a share of training rows (new users get trained weights).
    "full_user_dropout_0.1": dict(user_id_dropout=0.1),
    "full_user_dropout_0.3": dict(user_id_dropout=0.3),
    # Each row's positive drawn from the user's next W events (PinnerFormer's all-action target).
    "full_window_8": dict(target_window=8),
    "full_window_32": dict(target_window=32),
    "full_catalogue_t0.1": dict(negatives="catalogue", temperature=0.1),
    "full_catalogue_t0.025": dict(negatives="catalogue", temperature=0.025),
    "full_embedding_l2": dict(embedding_l2=1e-5),
    "full_8_epochs": dict(epochs=8),
    # Capacity and regularization of the id embeddings (the data-derived default's evidence).
    "full_id_dim_8": dict(id_embedding_dim=8),
    "full_id_dim_16": dict(id_embedding_dim=16),
    "full_id_dim_24": dict(id_embedding_dim=24),
    "full_id_dim_48": dict(id_embedding_dim=48),
    "full_id_dim_64": dict(id_embedding_dim=64),
    "full_embedding_l2_1e-4": dict(embedding_l2=1e-4),
    "full_dropout_0.3": dict(dropout=0.3),
    "sasrec_mixed_negatives": dict(history_encoder="sasrec", uniform_negatives=256),
    # The sequence objective (trainer/retrieval/sequence.py): every event of a user's sequence a
    # target of its prefix, full softmax over the catalogue.
    "seq_gru": dict(objective="sequence", history_encoder="gru"),
    "seq_gru_side_by_side": dict(objective="sequence", history_encoder="gru", sequence_stride=10 ** 9),
    "seq_sasrec": dict(objective="sequence", history_encoder="sasrec"),
    "seq_mean": dict(objective="sequence", history_encoder="mean"),
    "seq_sasrec_history_only": dict(objective="sequence", history_encoder="sasrec", use_user_id=False,
                                    use_content_features=False, use_context=False),
    # Leave-one-out from the default: what each part contributes on top of the rest.
    "full_no_logq": dict(logq_correction=False),
    "full_no_accidental_hits": dict(remove_accidental_hits=False),
    "full_no_history": dict(use_history=False),
    "full_no_content": dict(use_content_features=False),
    "full_no_context": dict(use_context=False),
}
RESULTS = Path(__file__).resolve().parent / "results"


def _latest(root: Path, component: str, output: str) -> str:
    base = root / "artifacts" / component / output
    return str(base / str(max(int(p.name) for p in base.iterdir() if p.name.isdigit())))


def _schema_with_history(cfg, length: int) -> str:
    """A copy of the config's curated schema whose history lists hold up to ``length`` items
    (the curated one pins examples.history_length), under bench/results/schemas/."""
    import re

    from tfx_pipeline.config import resolve_path

    source = Path(resolve_path(cfg.schema_dir)) / "schema.pbtxt"
    text = source.read_text()
    pattern = r'(name: "(?:history_item_ids)"\s*value_count \{\s*min: \d+\s*max: )\d+'
    text, n = re.subn(pattern, lambda m: m.group(1) + str(length), text)
    if not n:
        raise SystemExit(f"{source}: no history_item_ids value_count to widen")
    target = RESULTS / "schemas" / f"{cfg.name}_h{length}"
    target.mkdir(parents=True, exist_ok=True)
    (target / "schema.pbtxt").write_text(text)
    return str(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/movielens_100k.yaml")
    parser.add_argument("--split", choices=["per_user", "global_time", "leave_last_one"], default="per_user")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.retrieval.epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra trainer.retrieval override for every variant, e.g. --set learning_rate=0.01")
    parser.add_argument("--sequence-length", type=int, default=0, metavar="N",
                        help="examples.sequence_length: users' stored state and the sequence objective's window "
                             "(N > history_length; the variants with objective sequence use it; its own data half)")
    parser.add_argument("--history-length", type=int, default=0, metavar="N",
                        help="examples.history_length: the per-event rows' history (its own data half)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    import yaml

    from tfx_pipeline import component_ids as ids
    from tfx_pipeline.config import load_config
    from tfx_pipeline.local_runner import run_local
    from trainer.hparams import sections, trainer_config
    from trainer.retrieval.train import train_and_export

    base = load_config(args.config)
    data_overrides = {"name": f"{base.name}_{args.split}", "examples": {"split": {"strategy": args.split}}}
    if args.sequence_length:  # a data half of its own (the user-state rows differ); the config check wants
        # the objective that reads them, which the variants set for themselves
        data_overrides = {"name": f"{base.name}_{args.split}_seq{args.sequence_length}",
                          "examples": {"split": {"strategy": args.split}, "sequence_length": args.sequence_length},
                          "trainer": {"retrieval": {"objective": "sequence"}}}
    if args.history_length:  # a data half of its own (every row's history differs)
        data_overrides["name"] += f"_h{args.history_length}"
        data_overrides["examples"]["history_length"] = args.history_length
        data_overrides["schema_dir"] = _schema_with_history(base, args.history_length)
    cfg = load_config(args.config, data_overrides)
    run_local(cfg, stage="data")
    examples = _latest(cfg.root, ids.EXAMPLE_BUILDER, "examples")
    transform = _latest(cfg.root, ids.TRANSFORM, "transform_graph")
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows, full_metrics = [], {}
    for name in args.variants.split(","):
        # base.trainer: the config's own objective (cfg's is set to sequence for --sequence-length's check)
        overrides = {**sections(base.trainer)["retrieval"], **VARIANTS[name], **extra}
        if args.epochs:
            overrides["epochs"] = args.epochs
        trainer_cfg = {**sections(base.trainer), "retrieval": overrides}
        with tempfile.TemporaryDirectory() as tmp:
            started = time.time()
            m = train_and_export(examples, transform, os.path.join(tmp, "serving"), os.path.join(tmp, "run"),
                                 cfg.side_features(), cfg.examples.history_length, trainer_config(trainer_cfg),
                                 split=cfg.examples.split, sequence_length=cfg.examples.state_length)
            sel = m.get("selection") or {}
            rows.append({"variant": name, "overrides": VARIANTS[name], **m["model"],
                         "validation": sel.get("best_value"), "validation_metric": sel.get("metric"),
                         "served_validation": sel.get("served_value"), "prior": m.get("popularity_prior", 0.0),
                         "prior_cold": m.get("popularity_prior_cold", m.get("popularity_prior", 0.0)),
                         "prior_betas": (m.get("popularity_prior_buckets") or {}).get("betas"),
                         "without_prior": m.get("model_without_prior"), "als_blend": m.get("als_blend", 0.0),
                         "without_als": m.get("model_without_als"),
                         "seconds": time.time() - started, "epochs_run": m["epochs_run"]})
            popularity, als = m["popularity"], m.get("als") or {}
            full_metrics[name] = m  # metrics.json as the trainer wrote it (slices, beyond accuracy, diagnosis)
        r = rows[-1]
        print(f"[ablation] {name}: recall@100 {r['recall@100']:.4f} ndcg@10 {r['ndcg@10']:.4f} (popularity prior "
              f"{r['prior']:g}" + (f"; without it {r['without_prior']['recall@100']:.4f} / "
                                   f"{r['without_prior']['ndcg@10']:.4f}" if r["without_prior"] else "")
              + f"; ALS blend {r['als_blend']:g}" + (f"; without it {r['without_als']['recall@100']:.4f} / "
                                                     f"{r['without_als']['ndcg@10']:.4f}" if r["without_als"] else "")
              + ")",
              flush=True)
    rows.append({"variant": "popularity", **popularity, "seconds": 0.0, "epochs_run": 0})
    if "recall@100" in als:  # the trainer's classical baseline, on the same eval task
        rows.append({"variant": "als", **{k: v for k, v in als.items() if "@" in k or k == "num_users"},
                     "seconds": float(als.get("train_seconds", 0.0)), "epochs_run": 0})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (f"ablation_{base.name}_{args.split}" + (f"_seq{args.sequence_length}" if args.sequence_length else "")
                  + (f"_h{args.history_length}" if args.history_length else ""))
    meta = {"config": args.config, "split": args.split, "machine": f"{platform.node()} {os.cpu_count()} cpu",
            "command": "python -m bench.ablation " + " ".join(argv if argv is not None else os.sys.argv[1:])}
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    # Each variant's whole metrics.json (the report's slice and beyond-accuracy tables render from it:
    # trainer.report.slice_table / beyond_accuracy_rows).
    Path(f"{stem}_metrics.json").write_text(json.dumps({"meta": meta, "metrics": full_metrics}, indent=2, default=float))
    lines = [f"Retrieval ablation, {base.name}, {args.split} split ({meta['machine']})", "",
             "Defaults are chosen on the validation column (carved from train), never on the eval columns.", "",
             "`validation`: the epoch-selection metric on the validation split, the model's own scores; "
             "`prior`: the popularity prior's beta (trainer/retrieval/prior.py; `by activity`: each activity bucket's, 0 history items first) and the validation metric of the served scores; "
             "`ALS w`: the ALS blend's weight (trainer/retrieval/als_blend.py), picked after the prior; "
             "the eval columns are the served scores (prior and blend included), `without prior` the same model's "
             "own scores, `without ALS` the served scores less the blend.",
             "",
             "| variant | validation | prior (validation) | ALS w | Recall@10 | Recall@50 | Recall@100 | NDCG@10 | HR@10 | "
             "without prior R@100 / NDCG@10 | without ALS R@100 / NDCG@10 | epochs | train+eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        val = "-" if r.get("validation") is None else f"{r['validation']:.4f} ({r['validation_metric']})"
        betas = r.get("prior_betas") or []
        pri = "-" if "prior" not in r else (f"{r['prior']:g}" + (
            " (by activity " + "/".join(f"{b:g}" for b in betas) + ")" if len(set(betas)) > 1 else
            f", cold {r['prior_cold']:g}" if r.get("prior_cold", r["prior"]) != r["prior"] else "") + (
            f" ({r['served_validation']:.4f})" if r.get("served_validation") is not None else ""))
        wo, wa = (f"{x['recall@100']:.4f} / {x['ndcg@10']:.4f}" if x else "-"
                  for x in (r.get("without_prior"), r.get("without_als")))
        blend = f"{r['als_blend']:g}" if "als_blend" in r else "-"
        lines.append(f"| {r['variant']} | {val} | {pri} | {blend} | {r['recall@10']:.4f} | {r['recall@50']:.4f} | "
                     f"{r['recall@100']:.4f} | {r['ndcg@10']:.4f} | {r['hit_rate@10']:.4f} | {wo} | {wa} | "
                     f"{r['epochs_run']} | "
                     f"{r['seconds']:.0f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
