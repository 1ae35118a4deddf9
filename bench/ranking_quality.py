"""Ranking quality: our DCN-v2 multitask model against a TFRS-tutorial rating model.

    python -m bench.ranking_quality --config configs/movielens_100k.yaml [--split global_time] [--smoke]

Same split (trainer/splits.py), same eval rows, same metric code for both:
RMSE of the predicted rating and AUC of the engagement label (rating >= the config's
threshold). The tutorial model (TFRS "basic ranking" tutorial) embeds user id and
item id (32 dims), concatenates them, applies Dense 256-64-1 and trains with MSE and
Adagrad(0.1); its predicted rating is also its engagement score. Ours is trained by
trainer/ranking/train.py on the pipeline's data half for the same split. Writes
bench/results/ranking_quality_<dataset>_<split>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def rmse(y, p) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, np.float64) - np.asarray(p, np.float64)) ** 2)))


def auc(labels, scores) -> float:
    """Mann-Whitney AUC with tie correction (rank-based, exact)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tutorial_rating_model(train, evals, epochs: int, seed: int) -> np.ndarray:
    """Trains the tutorial model on train rows; returns predicted ratings for the eval rows."""
    import trainer  # noqa: F401  (tf-keras before TensorFlow)
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    tf.keras.utils.set_random_seed(seed)
    users = {u: i + 1 for i, u in enumerate(sorted(train["user_id"].unique()))}
    items = {v: i + 1 for i, v in enumerate(sorted(train["item_id"].unique()))}

    def encode(frame):
        return {"user": np.array([users.get(u, 0) for u in frame["user_id"]], np.int32),
                "item": np.array([items.get(v, 0) for v in frame["item_id"]], np.int32)}

    class RatingModel(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.user = tf.keras.layers.Embedding(len(users) + 1, 32)
            self.item = tf.keras.layers.Embedding(len(items) + 1, 32)
            self.mlp = tf.keras.Sequential([tf.keras.layers.Dense(256, activation="relu"),
                                            tf.keras.layers.Dense(64, activation="relu"), tf.keras.layers.Dense(1)])
            self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError())

        def call(self, x):
            return self.mlp(tf.concat([self.user(x["user"]), self.item(x["item"])], axis=1))

        def compute_loss(self, x, training=False):
            return self.task(labels=x["rating"], predictions=self(x))

    ds = tf.data.Dataset.from_tensor_slices({**encode(train), "rating": train["rating"].to_numpy(np.float32)})
    ds = ds.shuffle(100_000, seed=seed, reshuffle_each_iteration=False).batch(8192).cache()
    model = RatingModel()
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=0.1))
    model.fit(ds, epochs=epochs, verbose=0)
    return model.predict(tf.data.Dataset.from_tensor_slices(encode(evals)).batch(8192), verbose=0).reshape(-1)


def ours(cfg, split: str, epochs: int | None) -> tuple[dict, float]:
    from tfx_pipeline.config import load_config
    from tfx_pipeline.local_runner import run_local
    from tfx_pipeline.summary import latest
    from tfx_pipeline import component_ids as ids
    from trainer.hparams import sections, trainer_config
    from trainer.ranking.train import train_and_export

    run_cfg = load_config(cfg.source_path, {"name": f"{cfg.name}_{split}", "examples": {"split": {"strategy": split}}})
    run_local(run_cfg, stage="data")
    trainer_cfg = sections(run_cfg.trainer)
    if epochs:
        trainer_cfg["ranking"] = {**trainer_cfg.get("ranking", {}), "epochs": epochs}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        m = train_and_export(latest(run_cfg.root, ids.EXAMPLE_BUILDER, "examples"),
                             latest(run_cfg.root, ids.TRANSFORM, "transform_graph"),
                             os.path.join(tmp, "serving"), os.path.join(tmp, "run"),
                             run_cfg.side_features(), run_cfg.examples.history_length, trainer_config(trainer_cfg),
                             split=run_cfg.examples.split)
    return m, time.time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/movielens_100k.yaml")
    parser.add_argument("--split", choices=["global_time", "per_user"], default="global_time")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for both models (default: tutorial 5, ours config)")
    parser.add_argument("--smoke", action="store_true", help="1 epoch each: seconds, for CI")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    from trainer import splits
    from tfx_pipeline.config import load_config
    from tfx_pipeline.data.datasets import ensure_dataset
    from tfx_pipeline.data.tables import load_events

    cfg = load_config(args.config)
    ensure_dataset(cfg)
    events = load_events(cfg)
    s = cfg.examples.split
    which = splits.assign_splits(events, args.split, s.eval_fraction, s.min_user_events)
    train, evals = events[which == splits.TRAIN], events[which == splits.EVAL]
    threshold = cfg.examples.engagement_threshold
    epochs = 1 if args.smoke else args.epochs

    started = time.time()
    pred = tutorial_rating_model(train, evals, epochs or 5, seed=42)
    tutorial_s = time.time() - started
    y, engaged = evals["rating"].to_numpy(), (evals["rating"].to_numpy() >= threshold)
    rows = [
        {"model": "global mean rating", "rmse": rmse(y, np.full(len(y), train["rating"].mean())), "auc": 0.5, "seconds": 0.0},
        {"model": "TFRS-tutorial rating model (ids, MLP)", "rmse": rmse(y, pred), "auc": auc(engaged, pred),
         "seconds": tutorial_s},
    ]
    m, ours_s = ours(cfg, args.split, epochs)
    rows.append({"model": "ours: DCN-v2 multitask", "rmse": m["model"]["rmse"], "auc": m["model"]["auc"], "seconds": ours_s})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"ranking_quality_{cfg.name}_{args.split}{'_smoke' if args.smoke else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"split": args.split, "num_eval": int(len(evals)), "rows": rows}, indent=2))
    lines = [f"Ranking, {cfg.name}, {args.split} split, {len(evals):,} eval events", "",
             "| model | RMSE | AUC (engaged) | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['rmse']:.4f} | {r['auc']:.4f} | {r['seconds']:.0f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
