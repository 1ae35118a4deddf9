"""TFX Trainer ``run_fn`` for the DCN-v2 multitask ranking model: its recipe for trainer/skeleton.py.

custom_config: {"side_features": {key: kind}, "history_length": N,
                "trainer": {...trainer section of the dataset config...}}

Trains trainer/ranking/model.py on the train split (raw examples -> Transform graph
-> model inputs, cached in memory, shuffled), early-stops on the eval split, and
writes to the Model artifact the ``ranking`` SavedModel (trainer/ranking/export.py,
with warmup requests) and, to the ModelRun artifact:

- ``metrics.json``: eval RMSE (rating) and AUC (engagement) of the model and of the
  baselines on the same rows: the global train-mean rating, and item popularity
  (train count) as the engagement score; also beside the model, for the gate;
- ``history.json``: per-epoch losses/metrics (train and val_) and gradient norms;
- ``feature_importance.json``: permutation importance on (a sample of) the eval
  split: per input feature group, the RMSE increase and the AUC drop when that
  group's tensors are shuffled across rows;
- ``feature_importance_sample.json``: the rows it was computed on (the first
  ``IMPORTANCE_ROWS`` of the eval split, in file order: not a random sample) and the
  model's RMSE/AUC on them, beside the whole eval split's row count, so the report can
  say why its base RMSE differs from metrics.json's;
- TensorBoard logs.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf

from trainer import artifacts, features as F, raw_data, skeleton
from trainer.hparams import TrainerConfig
from trainer.splits import SplitConfig
from trainer.model_inputs import FeatureLayout, drop_context
from trainer.query import QueryResolver
from trainer.ranking import export
from trainer.ranking.model import ENGAGEMENT_LOGIT, RATING, RankingModel, group_name
from trainer.skeleton import Evaluation, Prepared, SplitData, TrainingData
from trainer.training_logs import log
from trainer.warmup_requests import write_ranking_warmup
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
    """Input feature group -> the model-input tensors that carry it (shuffled together); the
    names are the explain signature's (``model.group_name``)."""
    base = group_name
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
                           seed: int = 0) -> tuple[dict[str, dict[str, float]], dict]:
    """Per feature group: RMSE increase and AUC drop when its tensors are shuffled across the sample's rows.

    Returns (that, the sample: ``{"rows", "max_rows", "selection", "rmse", "auc", "seed"}``,
    with the model's RMSE and AUC on the sample's rows; empty dicts when there is no eval row).
    """
    sample = next(iter(eval_rows.take(max_rows).padded_batch(max_rows)), None)
    if sample is None:
        return {}, {}
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
    return out, {"rows": n, "max_rows": max_rows, "selection": "the first rows of the eval split, in file order",
                 "rmse": base_rmse, "auc": base_auc, "seed": seed}


def train_stats(train_rows: tf.data.Dataset, num_items: int) -> tuple[float, float, np.ndarray, int]:
    """(mean rating, engaged rate, item counts, rows) of the train split; the heads start from them."""
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
        raise skeleton.TrainingDataError("ranking: the train split is empty (after carving validation off it): "
                                         "nothing to train on")
    return total / n, engaged / n, counts, n


def with_exposures(data: TrainingData, rows: tf.data.Dataset, enabled: bool) -> tuple[tf.data.Dataset, int]:
    """Train rows plus the not-engaged logged exposures (the exposures split), when there are any.

    Exposure rows are engagement negatives with a rating-loss weight of 0; train rows
    weigh 1. Without exposures the rows are returned unchanged.
    """
    files = glob.glob(os.path.join(artifacts.split_dir(data.examples_uri, artifacts.EXPOSURES_SPLIT), "*"))
    if not enabled or not files:
        return rows, 0
    if artifacts.EXPOSURES_SPLIT not in data.side_reads:  # read once, also when the model is refit
        rows_read, _ = raw_data.read_split(sorted(files), data.raw_spec, data.tft_layer, data.layout)
        data.side_reads[artifacts.EXPOSURES_SPLIT] = (rows_read, int(rows_read.reduce(0, lambda c, _: c + 1).numpy()))
    exposures, n = data.side_reads[artifacts.EXPOSURES_SPLIT]
    weight = lambda w: (lambda row: {**row, F.RATING_WEIGHT: tf.constant(w, tf.float32)})
    log(f"ranking: + {n} logged exposures without engagement as negatives (rating weight 0)")
    return rows.map(weight(1.0)).concatenate(exposures.map(weight(0.0))), n


class RankingRecipe:
    """What the DCN-v2 multitask model adds to the training skeleton."""

    kind = "ranking"

    def raw_keys(self, side_features: dict) -> dict[str, list[str]]:
        return {}  # everything it needs is in the transformed rows

    def datasets(self, data: TrainingData, hp, train: SplitData, validation: SplitData | None) -> Prepared:
        rating_mean, engaged_rate, item_counts, num_train = train_stats(train.rows, data.layout.num_items)
        train_rows, num_exposures = with_exposures(data, train.rows, hp.use_exposures)
        batch_size = data.batch_size(hp.batch_size)
        fit_batch = data.fit_batch_size(hp.batch_size, num_train + num_exposures, self.kind)
        return Prepared(
            train_ds=raw_data.batched(train_rows, fit_batch, True, hp.seed, drop_context(hp.context_dropout, hp.seed)),
            eval_ds=raw_data.batched(validation.rows, batch_size, False, hp.seed) if validation else None,
            probe=lambda model, ds: model(next(iter(ds))),
            extras={"rating_mean": rating_mean, "engaged_rate": engaged_rate, "item_counts": item_counts,
                    "num_train": num_train, "num_exposures": num_exposures},
            describe=f"{hp.num_cross_layers} cross layer(s), deep {list(hp.deep_units)}, {num_train} train rows")

    def selection_monitor(self, data: TrainingData, model, hp, selection, prepared: Prepared):
        """The weighted loss of both heads per example over the whole validation split (what the
        config trades off). Not Keras' ``val_loss``: for a tfrs model that is the last validation
        batch's loss only (trainer/training_logs.py ``PerExampleLoss``)."""
        return "val_loss_per_example", "min", None

    def build(self, data: TrainingData, hp, prepared: Prepared) -> tf.keras.Model:
        x = prepared.extras
        model = RankingModel(data.layout, hp, data.history_length, rating_mean=x["rating_mean"],
                             engagement_rate=x["engaged_rate"])
        model.compile(optimizer=tf.keras.optimizers.Adam(hp.learning_rate))
        return model

    def evaluate(self, data: TrainingData, model, hp, prepared: Prepared, config: TrainerConfig) -> Evaluation:
        """The whole eval split: the model against the baselines on the same rows (``config``: unused)."""
        x = prepared.extras
        pred = predict_dataset(model, raw_data.batched(data.eval.rows, data.batch_size(hp.batch_size), False, hp.seed))
        rating_mean = x["rating_mean"]
        metrics = {
            "model": {"rmse": rmse(pred["y_rating"], pred["rating"]), "auc": auc(pred["y_engaged"], pred["logit"])},
            "baseline": {"rmse": rmse(pred["y_rating"], np.full(len(pred["y_rating"]), rating_mean)),
                         "auc": auc(pred["y_engaged"], x["item_counts"][pred["item"]].astype(np.float64))},
            "baseline_definition": {"rmse": "global mean train rating", "auc": "item train count (popularity)"},
            "num_eval_examples": int(len(pred["y_rating"])),
            "num_train_examples": x["num_train"],
            "num_exposure_negatives": x["num_exposures"],
            "train_rating_mean": rating_mean,
            "train_engaged_rate": x["engaged_rate"],
            "eval_engaged_rate": float(np.mean(pred["y_engaged"])) if len(pred["y_engaged"]) else float("nan"),
        }
        log(f"ranking: {fmt_metrics(metrics)}")
        return Evaluation(metrics=metrics)

    def export(self, data: TrainingData, model, hp, evaluation: Evaluation, serving_dir: str) -> None:
        """The resolver (Transform graph + stored user state) + item rows + the model."""
        importance, sample = permutation_importance(model, data.eval.rows, data.layout, seed=hp.seed)
        evaluation.run_files[artifacts.IMPORTANCE_FILE] = importance
        evaluation.run_files[artifacts.IMPORTANCE_SAMPLE_FILE] = {
            **sample, "eval_rows": int(evaluation.metrics.get("num_eval_examples", len(data.eval.raw[F.USER_ID])))}
        item_rows = export.build_item_rows(data.items, data.tft_layer, data.layout, data.item_features)
        resolver = QueryResolver(data.tft_layer, None, data.layout, data.user_features, data.users,
                                 data.history_length)
        module = export.RankingModule(resolver, model, data.items[F.ITEM_ID], item_rows, data.user_features,
                                      raw_spec=data.raw_spec)
        export.save(module, serving_dir)
        write_ranking_warmup(serving_dir, data.users, data.user_features,
                             [v.decode() for v in data.items[F.ITEM_ID]])


RECIPE = RankingRecipe()


def fmt_metrics(m: dict) -> str:
    return (f"RMSE {m['model']['rmse']:.4f} (global mean {m['baseline']['rmse']:.4f}), "
            f"AUC {m['model']['auc']:.4f} (popularity {m['baseline']['auc']:.4f})")


def train_and_export(examples_uri: str, transform_dir: str, serving_dir: str, run_dir: str, side_features: dict,
                     history_length: int, config: TrainerConfig, log_dir: str | None = None,
                     base_model: str | None = None, split: SplitConfig | None = None,
                     sequence_length: int = 0) -> dict:
    """The whole ranking training; plain function so tests and benchmarks call it directly.

    ``split``: how the examples' eval split was cut (validation is carved the same way);
    ``config``: the typed trainer config; ``base_model``: the latest blessed ranking
    model to warm-start from, or None.
    """
    return skeleton.train_and_export(RECIPE, examples_uri, transform_dir, serving_dir, run_dir, side_features,
                                     history_length, config, log_dir=log_dir, base_model=base_model, split=split,
                                     sequence_length=sequence_length)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    skeleton.run_fn(RECIPE, fn_args)
