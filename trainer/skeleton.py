"""The one training skeleton: data, model build, fit with callbacks, evaluation, export, metrics.

Both trainers (trainer/retrieval/train.py, trainer/ranking/train.py) and the Tuner's
trials (trainer/tuning.py) run through ``train``; each model contributes only what
differs, as a ``Recipe``:

    recipe.raw_keys(side_features)      -> the raw columns it needs besides the model inputs
    recipe.datasets(data, hp)           -> train / eval batches + what the model needs
    recipe.build(data, hp, prepared)    -> the compiled Keras model (inside the strategy scope)
    recipe.evaluate(data, model, ...)   -> the metrics (model vs baselines) + extra ModelRun files
                                           (it gets the whole TrainerConfig, e.g. for trainer.baseline)
    recipe.export(data, model, ...)     -> the SavedModel (+ warmup requests) in serving_dir

The skeleton does the rest the same way for both: seeds, the device strategy, each
split read once (``load_data``), warm start from the latest blessed model, early
stopping with best-weights restore, gradient norms, TensorBoard, ``history.json``,
``metrics.json`` beside the model and in the run directory, and it checks its
postconditions like TFX's own trainer executor (a SavedModel and its metrics file
were written) before returning.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_transform as tft

from serving.fileio import save_npy, write_json
from trainer import artifacts, data_defaults, features as F, raw_data
from trainer.distribute import choose_strategy, output_dirs, precision_scope
from trainer.hparams import (SelectionConfig, TrainerConfig, hyperparameter_values, trainer_config,
                             with_tuned_values)
from trainer.splits import SplitConfig, assign_splits
from trainer.typed_config import build
from trainer.model_inputs import FeatureLayout, layout_from_transform
from trainer.training_logs import GradientNormLogger, PerExampleLoss, log
from trainer.warm_start import base_metric, maybe_warm_start, save_state


class TrainingDataError(ValueError):
    """The examples cannot train or evaluate a model (e.g. an empty split); the message says what to change."""


@dataclasses.dataclass
class SplitData:
    """One interaction split, read once: transformed model-input rows + the raw columns asked for."""

    rows: tf.data.Dataset  # unbatched model inputs, cached in memory after the first pass
    raw: dict[str, np.ndarray]  # raw columns (scalars [N]; lists [N, L] padded)


@dataclasses.dataclass
class TrainingData:
    """What every model trains and exports from; built once per trainer (or per Tuner search)."""

    examples_uri: str
    transform_dir: str
    history_length: int  # items of history on each event row (examples.history_length)
    tft_layer: tf.keras.layers.Layer
    layout: FeatureLayout
    raw_spec: dict  # raw feature spec (parses the tf.Examples)
    user_features: dict  # canonical key -> kind
    item_features: dict
    strategy: tf.distribute.Strategy
    replicas: int
    train: SplitData
    eval: SplitData
    fit: SplitData | None  # train less validation (None: no validation split)
    validation: SplitData | None  # carved off train like eval was (trainer/splits.py)
    items: dict[str, np.ndarray]  # the candidates split (every catalogue item)
    users: dict[str, np.ndarray]  # the user-state split (latest history and features)
    side_reads: dict = dataclasses.field(default_factory=dict)  # other splits a recipe read, read once
    # Items of each user's stored state (examples.state_length): the window of the sequence
    # objective and the history its served query keeps; 0 = history_length.
    sequence_length: int = 0

    @property
    def state_length(self) -> int:
        return max(self.history_length, self.sequence_length)

    def batch_size(self, per_replica: int) -> int:
        return per_replica * self.replicas

    def fit_batch_size(self, per_replica: int, rows: int, kind: str) -> int:
        """The training batch (``per_replica`` x replicas), cut to fit ``rows`` when the split is smaller.

        Training batches drop the remainder, so a batch larger than the rows would give no
        step at all (and nothing to build the model's variables from).
        """
        wanted = self.batch_size(per_replica)
        if rows >= wanted:
            return wanted
        fitted = max(1, rows // self.replicas) * self.replicas
        log(f"{kind}: batch size {wanted} is larger than the {rows} training rows: batch {fitted} instead")
        return fitted


class Recipe(Protocol):
    """What one model kind contributes to the skeleton (see the module docstring)."""

    kind: str  # "retrieval" | "ranking": its section of TrainerConfig

    def raw_keys(self, side_features: dict) -> dict[str, list[str]]: ...  # split -> raw columns to keep

    def datasets(self, data: TrainingData, hp, train: SplitData, validation: SplitData | None) -> "Prepared": ...

    def selection_monitor(self, data: TrainingData, model: tf.keras.Model, hp, selection: SelectionConfig,
                          prepared: "Prepared") -> tuple[str, str, Any]: ...  # (logs key, min|max, callback)

    def build(self, data: TrainingData, hp, prepared: "Prepared") -> tf.keras.Model: ...

    # Optional: after_selection(data, model, hp, selection_callback, config) -> (hp, dict for
    # ``selection``): choices made on the selected weights, before the refit (retrieval's
    # popularity prior and ALS blend); ``selection_callback`` is None without a validation split.

    def evaluate(self, data: TrainingData, model: tf.keras.Model, hp, prepared: "Prepared",
                 config: TrainerConfig) -> "Evaluation": ...

    def export(self, data: TrainingData, model: tf.keras.Model, hp, evaluation: "Evaluation",
               serving_dir: str) -> None: ...


@dataclasses.dataclass
class Prepared:
    """A recipe's batches, the warm-start probe and whatever its build/evaluate/export need."""

    train_ds: tf.data.Dataset
    eval_ds: tf.data.Dataset
    probe: Callable[[tf.keras.Model, tf.data.Dataset], Any]  # one forward pass that creates every variable
    extras: dict = dataclasses.field(default_factory=dict)
    describe: str = ""  # the "training ..." log line's model-specific part
    steps_per_epoch: int = 0  # > 0: the batches of an epoch when they are not rows / batch size
    batch_size: int = 0  # > 0: what a training batch holds when it is not hp.batch_size rows


@dataclasses.dataclass
class Evaluation:
    metrics: dict  # -> metrics.json
    run_files: dict = dataclasses.field(default_factory=dict)  # file name -> JSON-able or np.ndarray
    state: dict = dataclasses.field(default_factory=dict)  # what export reuses (resolver, embeddings, ...)


def load_data(examples_uri: str, transform_dir: str, side_features: dict, history_length: int,
              raw_keys: dict[str, list[str]], seed: int,
              split: SplitConfig | None = None, selection: SelectionConfig | None = None,
              sequence_length: int = 0) -> TrainingData:
    """Transform output, layout, strategy, and every split read once.

    ``raw_keys``: per interaction split, the raw columns the recipe needs besides the
    transformed rows (they come from the same pass over the files). ``split``: how the
    eval split was cut (the examples' config); with ``selection.validation`` the same
    strategy carves a validation split off the end of train (``fit`` + ``validation``).
    ``sequence_length``: the items of the user-state rows (examples.state_length; 0 =
    ``history_length``).
    """
    strategy, replicas = choose_strategy()  # first: a multi-worker strategy must precede any TF op
    tf.keras.utils.set_random_seed(seed)
    tft_out = tft.TFTransformOutput(transform_dir)
    tft_layer = tft_out.transform_features_layer()
    layout = layout_from_transform(tft_out, side_features)
    spec = tft_out.raw_feature_spec()
    keys = {k: list(v) for k, v in raw_keys.items()}
    keys[artifacts.TRAIN] = sorted({*keys.get(artifacts.TRAIN, ()), F.USER_ID, F.ITEM_ID, F.TIMESTAMP})
    keys[artifacts.EVAL] = sorted({*keys.get(artifacts.EVAL, ()), F.USER_ID})  # to count its rows
    splits = {name: raw_data.read_split(raw_data.split_files(examples_uri, name), spec, tft_layer, layout,
                                        keys.get(name, ()))
              for name in (artifacts.TRAIN, artifacts.EVAL)}
    items = raw_data.read_numpy(raw_data.split_files(examples_uri, artifacts.CANDIDATES_SPLIT),
                                raw_data.subset_spec(spec, raw_data.item_keys(spec)))
    users = raw_data.read_numpy(raw_data.split_files(examples_uri, artifacts.USER_STATE_SPLIT),
                                raw_data.subset_spec(spec, raw_data.user_state_keys(spec)))
    train = SplitData(*splits[artifacts.TRAIN])
    for name in (artifacts.TRAIN, artifacts.EVAL):
        if not len(splits[name][1][F.USER_ID]):
            raise TrainingDataError(
                f"the {name} split of {examples_uri} has no rows: nothing to {'train on' if name == artifacts.TRAIN else 'evaluate on'}"
                f"; check examples.split (strategy, eval_fraction, min_user_events) against the log")
    fit, validation = carve_validation(train, split, selection)
    return TrainingData(
        examples_uri=examples_uri, transform_dir=transform_dir, history_length=history_length,
        tft_layer=tft_layer, layout=layout, raw_spec=spec,
        user_features={k: v for k, v in side_features.items() if k.startswith(F.USER_FEATURE_PREFIX)},
        item_features={k: v for k, v in side_features.items() if k.startswith(F.ITEM_FEATURE_PREFIX)},
        strategy=strategy, replicas=replicas,
        train=train, eval=SplitData(*splits[artifacts.EVAL]), fit=fit, validation=validation,
        items=items, users=users, sequence_length=sequence_length)


def carve_validation(train: SplitData, split: SplitConfig | None,
                     selection: SelectionConfig | None) -> tuple[SplitData | None, SplitData | None]:
    """(fit, validation): the train split cut like the eval split was; (None, None) when off or empty."""
    if split is None or selection is None or not selection.validation:
        return None, None
    fraction = selection.validation_fraction or split.eval_fraction
    events = pd.DataFrame({F.USER_ID: train.raw[F.USER_ID], F.TIMESTAMP: train.raw[F.TIMESTAMP]})
    labels = assign_splits(events, split.strategy, fraction, split.min_user_events)
    held = (labels == artifacts.EVAL).to_numpy()
    if not held.any() or held.all():
        log(f"selection: no validation split ({int(held.sum())} of {len(held)} train rows held out by "
            f"{split.strategy} at {fraction}); training fixed epochs without early stopping")
        return None, None

    def rows(mask: np.ndarray) -> SplitData:
        keep = tf.constant(mask)
        subset = train.rows.enumerate().filter(lambda i, row: tf.gather(keep, i)).map(lambda i, row: row)
        return SplitData(rows=subset, raw={k: v[mask] for k, v in train.raw.items()})

    log(f"selection: validation = {int(held.sum()):,} of {len(held):,} train rows ({split.strategy}, {fraction:g}); "
        f"the eval split is used only for the final figures and the gates")
    return rows(~held), rows(held)


def fit_callbacks(model, train_ds, patience: int, log_dir: str | None, monitor: str | None = "val_loss",
                  mode: str = "min", selection_callback=None, eval_ds=None, replicas: int = 1,
                  rows_are_examples: bool = True):
    """Early stopping on ``monitor`` over the validation split (best weights restored), the loss
    per example (over ``eval_ds`` too; ``rows_are_examples`` False: a batch's rows are not its
    examples), gradient norms, TensorBoard; no early stopping when ``monitor`` is None (no
    validation split)."""
    early_stopping = None
    callbacks = [selection_callback] if selection_callback is not None else []  # writes ``monitor`` first
    loss_logger = PerExampleLoss(model, train_ds, eval_ds, replicas, rows_are_examples)
    callbacks.append(loss_logger)
    if monitor is not None:
        early_stopping = tf.keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience,
                                                          restore_best_weights=True)
        callbacks.append(early_stopping)
    grad_logger = GradientNormLogger(model, train_ds)
    callbacks.append(grad_logger)
    if log_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    return callbacks, early_stopping, grad_logger, loss_logger


@dataclasses.dataclass
class Result:
    metrics: dict
    model: tf.keras.Model
    history: dict  # Keras' per-epoch history (+ grad_norm[/layer], [val_]loss_per_example, loss_scale)
    evaluation: Evaluation | None
    selection: dict  # what selected the epochs: metric, best epoch, its validation value
    hp: object = None  # the hyper-parameters used, data-derived fields filled in (trainer/data_defaults.py)


def _build(recipe: Recipe, data: TrainingData, hp, prepared: Prepared, base_model, warm_start_cfg):
    tf.keras.utils.set_random_seed(hp.seed)  # every model (and every trial) starts from the same seed
    with data.strategy.scope(), precision_scope(hp, recipe.kind):
        model = recipe.build(data, hp, prepared)
        warm, epochs = ({"taken": False, "reason": "warm start not requested"}, hp.epochs)
        if warm_start_cfg is not None:
            warm, epochs = maybe_warm_start(model, lambda: prepared.probe(model, prepared.train_ds), base_model,
                                            data.transform_dir, warm_start_cfg, hp, recipe.kind)
    return model, warm, epochs


AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS = 8, 50


def epochs_for_steps(epochs: int, min_steps: int, rows: int, batch_size: int, kind: str = "",
                     steps_per_epoch: int = 0) -> int:
    """``epochs`` when given (> 0); for 0 (the default), derived from the data: at least
    ``AUTO_MIN_EPOCHS``, raised until training takes ``min_steps`` optimizer steps (at most
    ``AUTO_MAX_EPOCHS``), so a small log gets as many updates as a larger one; early
    stopping on the validation split still ends training when it stops improving."""
    if epochs > 0:
        return epochs
    # The training batches drop the remainder; ``steps_per_epoch`` > 0 when a recipe's batches
    # are not rows (the sequence objective's are windows of a user's events).
    steps = max(1, steps_per_epoch or rows // max(1, batch_size))
    chosen = min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, -(-max(min_steps, 0) // steps)))
    log(f"{kind}: epochs derived from the data: {chosen} ({rows:,} rows, {steps} step(s) an epoch; "
        f"min_train_steps {min_steps})")
    return chosen


def resolved(data: TrainingData, hp, kind: str = "", base_model: str | None = None, warm_start_cfg=None):
    """``hp`` with the fields the config left to the data filled in (trainer/data_defaults.py);
    when the run will warm-start from ``base_model``, its id size is kept."""
    base_dim = None
    if base_model and warm_start_cfg is not None and warm_start_cfg.enabled:
        base_dim = base_metric(base_model, "id_embedding_dim")
    return data_defaults.resolve(hp, len(data.train.raw[F.USER_ID]), data.layout.num_users, data.layout.num_items,
                                 kind, base_dim)


def fit_and_evaluate(recipe: Recipe, data: TrainingData, hp, selection: SelectionConfig | None = None, *,
                     epochs: int | None = None, base_model: str | None = None, warm_start_cfg=None,
                     log_dir: str | None = None, evaluate: bool = True, verbose: int = 2,
                     config: TrainerConfig | None = None) -> Result:
    """Builds, (warm-starts,) fits on train less validation, selects the epoch on validation,
    refits on all of train when configured, and evaluates on the eval split.

    ``evaluate=False`` (the Tuner's trial) stops after selection: the eval split is not read.
    ``config``: the whole trainer config, for the recipe's evaluation (e.g. retrieval's
    classical baseline, ``trainer.baseline``); default ``TrainerConfig()``.
    """
    selection = selection or SelectionConfig()
    hp = resolved(data, hp, recipe.kind, base_model, warm_start_cfg)
    validating = data.validation is not None
    fit_split = data.fit if validating else data.train
    prepared = recipe.datasets(data, hp, fit_split, data.validation)
    started = time.time()
    model, warm, warm_epochs = _build(recipe, data, hp, prepared, base_model, warm_start_cfg)
    if epochs is None:
        epochs = epochs_for_steps(warm_epochs, getattr(hp, "min_train_steps", 0), len(fit_split.raw[F.USER_ID]),
                                  data.batch_size(hp.batch_size), recipe.kind, prepared.steps_per_epoch)
    monitor, mode, selection_callback = (recipe.selection_monitor(data, model, hp, selection, prepared)
                                         if validating else (None, "min", None))
    callbacks, early_stopping, grad_logger, loss_logger = fit_callbacks(
        model, prepared.train_ds, hp.early_stopping_patience, log_dir, monitor, mode, selection_callback,
        prepared.eval_ds, data.replicas, rows_are_examples=not prepared.steps_per_epoch)
    log(f"{recipe.kind}: training {epochs} epoch(s), batch {prepared.batch_size or data.batch_size(hp.batch_size)}, "
        f"{data.replicas} replica(s), {prepared.describe}"
        + (f"; early stopping on {monitor} (validation split)" if validating else "; no validation split"))
    fit = model.fit(prepared.train_ds, validation_data=prepared.eval_ds, epochs=epochs, callbacks=callbacks,
                    verbose=verbose)
    history = {**{k: [float(x) for x in v] for k, v in fit.history.items()}, "grad_norm": grad_logger.norms,
               "loss_scale": loss_logger.scale}  # how loss_per_example / val_loss_per_example were computed
    best = int(early_stopping.best_epoch) + 1 if early_stopping is not None else len(fit.history["loss"])
    chosen = {"validation": validating, "metric": monitor, "best_epoch": best,
              "best_value": float(history[monitor][best - 1]) if validating else None, "refit": False,
              "epochs_run": len(fit.history["loss"])}
    if validating:
        log(f"{recipe.kind}: selected epoch {best} of {chosen['epochs_run']} ({monitor} {chosen['best_value']:.4f})")
    after_selection = getattr(recipe, "after_selection", None)
    if after_selection is not None:  # choices made on the selected weights (e.g. retrieval's popularity prior)
        hp, picked = after_selection(data, model, hp, selection_callback, config or TrainerConfig())
        chosen.update(picked)
    if not evaluate:
        return Result(metrics={}, model=model, history=history, evaluation=None, selection=chosen, hp=hp)
    if validating and selection.refit:
        # The validation rows are the most recent ones: train again on all of train, as long as selected.
        prepared = recipe.datasets(data, hp, data.train, None)
        model, warm, _ = _build(recipe, data, hp, prepared, base_model, warm_start_cfg)
        log(f"{recipe.kind}: refit on all of train ({prepared.describe}) for the selected {best} epoch(s)")
        model.fit(prepared.train_ds, epochs=best, verbose=verbose)
        chosen["refit"] = True
    train_seconds = time.time() - started
    evaluation = recipe.evaluate(data, model, hp, prepared, config or TrainerConfig())
    evaluation.metrics.update({
        "train_seconds": train_seconds,
        "epochs_run": chosen["epochs_run"],
        "best_epoch": best,  # the epochs of the evaluated (and exported) weights
        "selection": chosen,
        "warm_start": warm,
    })
    if getattr(hp, "id_embedding_dim", None) is not None:
        evaluation.metrics["id_embedding_dim"] = hp.id_embedding_dim
    return Result(metrics=evaluation.metrics, model=model, history=history, evaluation=evaluation,
                  selection=chosen, hp=hp)


def train(recipe: Recipe, data: TrainingData, cfg: TrainerConfig, serving_dir: str, run_dir: str,
          log_dir: str | None = None, base_model: str | None = None) -> dict:
    """The whole training of one model kind, export and metrics included; returns the metrics.

    ``serving_dir``: TFX's ``<Model artifact>/Format-Serving``; ``run_dir``: the ModelRun
    artifact; ``base_model``: the latest blessed model of this kind to warm-start from.
    """
    hp = getattr(cfg, recipe.kind)
    # Multi-worker (TF_CONFIG): every worker fits and saves (both run collective ops), but only
    # the chief writes into these directories; the others into a temporary copy, then deleted.
    with output_dirs(serving_dir, run_dir, log_dir) as (serving_dir, run_dir, log_dir):
        result = fit_and_evaluate(recipe, data, hp, cfg.selection, base_model=base_model,
                                  warm_start_cfg=cfg.warm_start, log_dir=log_dir, config=cfg)
        model_dir = os.path.dirname(serving_dir.rstrip("/"))
        recipe.export(data, result.model, result.hp, result.evaluation, serving_dir)
        save_state(result.model, data.transform_dir, model_dir)

        tf.io.gfile.makedirs(run_dir)
        # Beside the model too: the gate reads it from the Model artifact (and from the
        # latest blessed Model's artifact).
        for directory in (run_dir, model_dir):
            _write_json(os.path.join(directory, artifacts.METRICS_FILE), result.metrics)
        _write_json(os.path.join(run_dir, artifacts.HISTORY_FILE), result.history)
        for name, value in result.evaluation.run_files.items():
            path = os.path.join(run_dir, name)
            if isinstance(value, np.ndarray):
                save_npy(path if path.endswith(".npy") else path + ".npy", value)  # np.save's naming
            else:
                _write_json(path, value)
        check_outputs(serving_dir, run_dir)
    return result.metrics


def check_outputs(serving_dir: str, run_dir: str) -> None:
    """Postconditions, as TFX's trainer executor checks them: a SavedModel and the metrics exist."""
    model_dir = os.path.dirname(serving_dir.rstrip("/"))
    missing = [p for p in (os.path.join(serving_dir, artifacts.SAVED_MODEL_FILE),
                           os.path.join(model_dir, artifacts.METRICS_FILE),
                           os.path.join(run_dir, artifacts.METRICS_FILE)) if not tf.io.gfile.exists(p)]
    if missing:
        raise RuntimeError(f"training finished without writing {missing}; nothing may be pushed from this run")


def _write_json(path: str, value) -> None:
    write_json(path, value)  # tf.io.gfile: a local path or a URI (gs://, s3:// ...)


def train_and_export(recipe: Recipe, examples_uri: str, transform_dir: str, serving_dir: str, run_dir: str,
                     side_features: dict, history_length: int, cfg: TrainerConfig, log_dir: str | None = None,
                     base_model: str | None = None, split: SplitConfig | None = None,
                     sequence_length: int = 0) -> dict:
    """Reads the data (each split once) and trains, exports and writes the metrics of one model.

    ``split``: how the examples' eval split was cut (the validation split is cut the same
    way); default ``SplitConfig()``, the pipeline's default global time split.
    """
    hp = getattr(cfg, recipe.kind)
    data = load_data(examples_uri, transform_dir, side_features, history_length,
                     recipe.raw_keys(side_features), hp.seed,
                     split or SplitConfig(), cfg.selection, sequence_length)
    return train(recipe, data, cfg, serving_dir, run_dir, log_dir=log_dir, base_model=base_model)


def run_fn(recipe: Recipe, fn_args) -> None:
    """A TFX Trainer ``run_fn`` body: the trainer config is parsed once here, for the whole run.

    custom_config: {"side_features": {key: kind}, "history_length": N, "sequence_length": M
                    (the user state's items), "trainer": {sections}, "split": {the examples' split config}};
    ``fn_args.hyperparameters``: the Tuner's best values, when the pipeline has a Tuner.
    """
    cc = fn_args.custom_config
    cfg = with_tuned_values(trainer_config(cc.get("trainer", {})), recipe.kind,
                            hyperparameter_values(fn_args.hyperparameters))
    train_and_export(recipe, raw_data.examples_root(fn_args.train_files), fn_args.transform_output,
                     fn_args.serving_model_dir, fn_args.model_run_dir, cc["side_features"], cc["history_length"], cfg,
                     log_dir=os.path.join(fn_args.model_run_dir, artifacts.TENSORBOARD_DIR),
                     base_model=fn_args.base_model, split=build(SplitConfig, cc.get("split", {}), "split"),
                     sequence_length=int(cc.get("sequence_length", 0)))
