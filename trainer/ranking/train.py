"""TFX Trainer ``run_fn`` for the DCN-v2 multitask ranking model.

custom_config: {"side_features": {key: kind}, "history_length": N,
                "trainer": {...trainer section of the dataset config...}}

Trains trainer/ranking_model.py on the train split (raw examples -> Transform graph
-> model inputs, cached in memory, shuffled), early-stops on the eval split, and
writes to the Model artifact the ``ranking`` SavedModel (trainer/ranking_export.py,
with warmup requests) and, to the ModelRun artifact:

- ``metrics.json``: eval RMSE (rating) and AUC (engagement) of the model and of the
  baselines on the same rows: the global train-mean rating, and item popularity
  (train count) as the engagement score; also beside the model, for the gate;
- ``history.json``: per-epoch losses/metrics (train and val_) and gradient norms;
- ``feature_importance.json``: permutation importance on (a sample of) the eval
  split: per input feature group, the RMSE increase and the AUC drop when that
  group's tensors are shuffled across rows;
- TensorBoard logs.
"""

from __future__ import annotations

import glob
import json
import os
import time

import numpy as np
import tensorflow as tf

from trainer import export, features as F, raw_data, ranking_export
from trainer.hparams import parse_trainer_config
from trainer.model_inputs import FeatureLayout
from trainer.ranking.model import ENGAGEMENT_LOGIT, RATING, RankingModel
from trainer.training_logs import log
from trainer.training_setup import fit_callbacks, prepare
from trainer.warm_start import maybe_warm_start, save_state

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
IMPORTANCE_FILE = "feature_importance.json"
IMPORTANCE_ROWS = 20_000  # eval rows used for permutation importance
PREDICT_BATCH = 4096


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, np.float64) - np.asarray(pred, np.float64)) ** 2))) if len(y) else float("nan")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (ties count half); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def feature_groups(layout: FeatureLayout) -> dict[str, list[str]]:
    """Input feature group -> the model-input tensors that carry it (shuffled together)."""
    def base(name: str) -> str:
        for suffix in (F.IDX_SUFFIX, F.TOKENS_SUFFIX):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name

    nums = lambda k: [k + F.Z_SUFFIX, k + F.BUCKET_SUFFIX]
    groups = {F.USER_ID: [F.USER_ID_IDX]}
    groups.update({base(n): [n] for n in layout.user_cats})
    groups.update({k: nums(k) for k in layout.user_nums})
    groups[F.ITEM_ID] = [F.ITEM_ID_IDX]
    groups.update({base(n): [n] for n in (*layout.item_cats, *layout.item_lists)})
    groups.update({k: nums(k) for k in layout.item_nums})
    groups["history"] = [F.HISTORY_IDX]
    groups["hour_of_day"] = [F.HOUR_OF_DAY]
    groups["day_of_week"] = [F.DAY_OF_WEEK]
    groups["recency"] = [F.RECENCY_Z]
    return groups


def _predict_fn(model):
    @tf.function(reduce_retracing=True)
    def fn(batch):
        out = model(batch, training=False)
        return tf.cast(out[RATING], tf.float32), tf.cast(out[ENGAGEMENT_LOGIT], tf.float32)
    return fn


def predict_dataset(model, ds: tf.data.Dataset) -> dict[str, np.ndarray]:
    fn = _predict_fn(model)
    parts = {k: [] for k in ("rating", "logit", "y_rating", "y_engaged", "item")}
    for batch in ds:
        r, lg = fn(batch)
        parts["rating"].append(r.numpy())
        parts["logit"].append(lg.numpy())
        parts["y_rating"].append(batch[F.RATING_LABEL].numpy())
        parts["y_engaged"].append(batch[F.ENGAGED_LABEL].numpy())
        parts["item"].append(batch[F.ITEM_ID_IDX].numpy())
    return {k: np.concatenate(v) if v else np.array([]) for k, v in parts.items()}


def _predict_sample(fn, sample: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    ratings, logits = [], []
    for start in range(0, n, PREDICT_BATCH):
        r, lg = fn({k: v[start:start + PREDICT_BATCH] for k, v in sample.items()})
        ratings.append(r.numpy())
        logits.append(lg.numpy())
    return np.concatenate(ratings), np.concatenate(logits)


def permutation_importance(model, eval_rows: tf.data.Dataset, layout: FeatureLayout, max_rows: int = IMPORTANCE_ROWS,
                           seed: int = 0) -> dict[str, dict[str, float]]:
    """Per feature group: RMSE increase and AUC drop when its tensors are shuffled across the sample's rows."""
    sample = next(iter(eval_rows.take(max_rows).padded_batch(max_rows)), None)
    if sample is None:
        return {}
    n = int(sample[F.RATING_LABEL].shape[0])
    y, e = sample[F.RATING_LABEL].numpy(), sample[F.ENGAGED_LABEL].numpy()
    fn = _predict_fn(model)
    r0, l0 = _predict_sample(fn, sample, n)
    base_rmse, base_auc = rmse(y, r0), auc(e, l0)
    rng = np.random.default_rng(seed)
    out = {}
    for group, tensors in feature_groups(layout).items():
        present = [t for t in tensors if t in sample]
        if not present:
            continue
        perm = tf.constant(rng.permutation(n))
        shuffled = dict(sample)
        for t in present:
            shuffled[t] = tf.gather(sample[t], perm)
        r, lg = _predict_sample(fn, shuffled, n)
        out[group] = {"rmse_increase": rmse(y, r) - base_rmse, "auc_drop": base_auc - auc(e, lg)}
    log(f"ranking: permutation importance on {n} eval rows (base RMSE {base_rmse:.4f}, AUC {base_auc:.4f})")
    return out


def _train_stats(train_rows: tf.data.Dataset, num_items: int) -> tuple[float, float, np.ndarray, int]:
    counts = np.zeros(num_items, dtype=np.int64)
    total, engaged, n = 0.0, 0.0, 0
    # Scalars only: rows differ in the length of their list features.
    scalars = train_rows.map(lambda r: (r[F.ITEM_ID_IDX], r[F.RATING_LABEL], r[F.ENGAGED_LABEL]))
    for items, ratings, engaged_labels in scalars.batch(8192):
        np.add.at(counts, items.numpy(), 1)
        total += float(np.sum(ratings.numpy(), dtype=np.float64))
        engaged += float(np.sum(engaged_labels.numpy()))
        n += int(ratings.shape[0])
    if n == 0:
        raise ValueError("ranking: the train split is empty")
    return total / n, engaged / n, counts, n


def _with_exposures(ctx, examples_uri: str, enabled: bool) -> tuple[tf.data.Dataset, int]:
    """Train rows plus the not-engaged logged exposures (EXPOSURES_SPLIT), when there are any.

    Exposure rows are engagement negatives with a rating-loss weight of 0; train rows
    weigh 1. Without exposures the rows are returned unchanged.
    """
    files = glob.glob(os.path.join(examples_uri, f"Split-{F.EXPOSURES_SPLIT}", "*"))
    if not enabled or not files:
        return ctx.train_rows, 0
    exposures = raw_data.transformed_rows(sorted(files), ctx.raw_spec, ctx.tft_layer, ctx.layout)
    n = int(exposures.reduce(0, lambda c, _: c + 1).numpy())
    weight = lambda w: (lambda row: {**row, F.RATING_WEIGHT: tf.constant(w, tf.float32)})
    log(f"ranking: + {n} logged exposures without engagement as negatives (rating weight 0)")
    return ctx.train_rows.map(weight(1.0)).concatenate(exposures.map(weight(0.0))), n


def train_and_export(examples_uri: str, transform_dir: str, serving_dir: str, run_dir: str, side_features: dict,
                     history_length: int, trainer_cfg: dict, log_dir: str | None = None,
                     base_model: str | None = None) -> dict:
    """The whole ranking training; plain function so tests and benchmarks call it directly.

    ``base_model``: the latest blessed ranking model to warm-start from, or None.
    """
    cfg = parse_trainer_config(trainer_cfg)
    hp = cfg.ranking
    ctx = prepare(examples_uri, transform_dir, side_features, hp.seed, hp.mixed_precision)
    tft_layer, layout, spec = ctx.tft_layer, ctx.layout, ctx.raw_spec
    user_features, item_features, replicas = ctx.user_features, ctx.item_features, ctx.replicas
    batch_size = hp.batch_size * replicas
    rating_mean, engaged_rate, item_counts, num_train = _train_stats(ctx.train_rows, layout.num_items)
    train_rows, num_exposures = _with_exposures(ctx, examples_uri, hp.use_exposures)
    train_ds = raw_data.batched(train_rows, batch_size, True, hp.seed)
    eval_ds = raw_data.batched(ctx.eval_rows, batch_size, False, hp.seed)

    started = time.time()
    with ctx.strategy.scope():
        model = RankingModel(layout, hp, history_length, rating_mean=rating_mean, engagement_rate=engaged_rate)
        model.compile(optimizer=tf.keras.optimizers.Adam(hp.learning_rate))
        warm, epochs = maybe_warm_start(model, lambda: model(next(iter(train_ds))), base_model, transform_dir,
                                        cfg.warm_start, hp, "ranking")
    # Keeps (restores) the weights of the epoch with the lowest weighted eval loss.
    callbacks, early_stopping, grad_logger = fit_callbacks(model, train_ds, hp.early_stopping_patience, log_dir)
    log(f"ranking: training {epochs} epoch(s), batch {batch_size}, {hp.num_cross_layers} cross layer(s), "
        f"deep {list(hp.deep_units)}, {replicas} replica(s), {num_train} train rows")
    fit = model.fit(train_ds, validation_data=eval_ds, epochs=epochs, callbacks=callbacks, verbose=2)
    train_seconds = time.time() - started

    # Evaluation on the whole eval split: the model against the baselines on the same rows.
    pred = predict_dataset(model, eval_ds)
    metrics = {
        "model": {"rmse": rmse(pred["y_rating"], pred["rating"]), "auc": auc(pred["y_engaged"], pred["logit"])},
        "baseline": {"rmse": rmse(pred["y_rating"], np.full(len(pred["y_rating"]), rating_mean)),
                     "auc": auc(pred["y_engaged"], item_counts[pred["item"]].astype(np.float64))},
        "baseline_definition": {"rmse": "global mean train rating", "auc": "item train count (popularity)"},
        "num_eval_examples": int(len(pred["y_rating"])),
        "num_train_examples": num_train,
        "num_exposure_negatives": num_exposures,
        "train_rating_mean": rating_mean,
        "train_engaged_rate": engaged_rate,
        "eval_engaged_rate": float(np.mean(pred["y_engaged"])) if len(pred["y_engaged"]) else float("nan"),
        "train_seconds": train_seconds,
        "epochs_run": len(fit.history["loss"]),
        "best_epoch": int(early_stopping.best_epoch) + 1,  # the weights evaluated and exported
        "warm_start": warm,
    }
    importance = permutation_importance(model, ctx.eval_rows, layout, seed=hp.seed)

    # Export: the resolver (Transform graph + stored user state) + item rows + the model.
    items = raw_data.read_numpy(raw_data.split_files(examples_uri, "items"), raw_data.subset_spec(spec, raw_data.item_keys(spec)))
    item_rows = ranking_export.build_item_rows(items, tft_layer, layout, item_features)
    users = raw_data.read_numpy(raw_data.split_files(examples_uri, "users"), raw_data.subset_spec(spec, raw_data.user_state_keys(spec)))
    resolver = export.QueryResolver(tft_layer, None, layout, user_features, users, history_length)
    module = ranking_export.RankingModule(resolver, model, items[F.ITEM_ID], item_rows, user_features, raw_spec=spec)
    ranking_export.save(module, serving_dir)
    save_state(model, transform_dir, os.path.dirname(serving_dir.rstrip("/")))
    from trainer.warmup_requests import write_ranking_warmup
    write_ranking_warmup(serving_dir, users, user_features, [v.decode() for v in items[F.ITEM_ID]])

    os.makedirs(run_dir, exist_ok=True)
    # Beside the model too: the gate reads it from the Model artifact.
    for directory in (run_dir, os.path.dirname(serving_dir.rstrip("/"))):
        with open(os.path.join(directory, METRICS_FILE), "w") as fh:
            json.dump(metrics, fh, indent=2)
    with open(os.path.join(run_dir, HISTORY_FILE), "w") as fh:
        json.dump({**{k: [float(x) for x in v] for k, v in fit.history.items()},
                   "grad_norm": grad_logger.norms}, fh, indent=2)
    with open(os.path.join(run_dir, IMPORTANCE_FILE), "w") as fh:
        json.dump(importance, fh, indent=2)
    log(f"ranking: {fmt_metrics(metrics)}")
    return metrics


def fmt_metrics(m: dict) -> str:
    return (f"RMSE {m['model']['rmse']:.4f} (global mean {m['baseline']['rmse']:.4f}), "
            f"AUC {m['model']['auc']:.4f} (popularity {m['baseline']['auc']:.4f}), "
            f"{m['epochs_run']} epoch(s) in {m['train_seconds']:.1f}s")


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    from trainer.tuning import apply_best_hyperparameters

    cc = fn_args.custom_config
    train_and_export(
        examples_uri=raw_data.examples_root(fn_args.train_files),
        transform_dir=fn_args.transform_output,
        serving_dir=fn_args.serving_model_dir,
        run_dir=fn_args.model_run_dir,
        side_features=cc["side_features"],
        history_length=cc["history_length"],
        # The Tuner's best values, when the pipeline has a Tuner (trainer/tuning.py).
        trainer_cfg=apply_best_hyperparameters(cc.get("trainer", {}), fn_args.hyperparameters, "ranking"),
        log_dir=os.path.join(fn_args.model_run_dir, "tensorboard"),
        base_model=fn_args.base_model,
    )
