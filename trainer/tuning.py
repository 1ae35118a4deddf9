"""Optional hyper-parameter search before each Trainer: TFX Tuner ``tuner_fn``s (KerasTuner).

Off by default; ``trainer.tuning.enabled: true`` adds a ``RetrievalTuner`` and a
``RankingTuner`` to the pipeline (tfx_pipeline/training_stage.py), and each Trainer
receives its Tuner's best hyper-parameters (``fn_args.hyperparameters``, applied to
the trainer config with ``apply_best_hyperparameters``). Tuning settings
(trainer/hparams.py ``TuningConfig``)::

    trainer:
      tuning: {enabled: true, max_trials: 4, epochs_per_trial: 2, algorithm: random|bayesian, seed: 0}

Search spaces (the defaults are the trainer defaults of trainer/hparams.py; every
other hyper-parameter keeps its configured value):

retrieval (two-tower, ``trainer.retrieval``)
    learning_rate    float in [3e-4, 1e-2], log-uniform
    temperature      one of 0.02, 0.05, 0.1, 0.2 (in-batch softmax over cosine / temperature)
    embedding_dim    one of 32, 64, 128 (tower output size)
    history_encoder  one of mean, gru, attention

ranking (DCN-v2 multitask, ``trainer.ranking``)
    learning_rate     float in [3e-4, 1e-2], log-uniform
    embedding_dim     one of 16, 32, 64
    num_cross_layers  integer in [1, 3]
    dropout           one of 0.0, 0.1, 0.2, 0.3

Objectives (computed on the eval split, after the epoch with the lowest eval loss,
whose weights early stopping restores, as in the trainers):

- retrieval: **Recall@100** (maximized), the user-level protocol of the trainer's
  evaluation and of the retrieval gate (``retrieval_trainer.evaluate``). Not the eval
  loss: the in-batch softmax loss changes scale with ``temperature``, so losses of
  trials with different temperatures are not comparable.
- ranking: the **eval loss** (minimized), ``rating_loss_weight * MSE +
  engagement_loss_weight * BCE``: the trade-off between the two heads that the
  config states and that early stopping already selects on. Eval RMSE and AUC are
  recorded with every trial too.

Each trial builds, trains and evaluates the model with the trainers' own code
(trainer/training_setup.py ``prepare``, the towers / models, ``raw_data.batched``,
the evaluation functions); the data is read and transformed once per search.
Models are not kept: the Trainer trains from scratch with the best values.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import tempfile
from typing import Any, Callable

import numpy as np

# Light on purpose (run_fn imports apply_best_hyperparameters): KerasTuner (which
# imports Keras 3) and the trainer modules are imported where used, which also keeps
# the trainers free to import this module.
from trainer.hparams import RankingHParams, RetrievalHParams, TuningConfig, parse_trainer_config
from trainer.training_logs import log

RETRIEVAL = "retrieval"
RANKING = "ranking"
HPARAMS = {RETRIEVAL: RetrievalHParams, RANKING: RankingHParams}


def retrieval_search_space():
    """The retrieval search space, a ``keras_tuner.HyperParameters``."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Float("learning_rate", 3e-4, 1e-2, sampling="log", default=RetrievalHParams.learning_rate)
    hp.Choice("temperature", [0.02, 0.05, 0.1, 0.2], default=RetrievalHParams.temperature)
    hp.Choice("embedding_dim", [32, 64, 128], default=RetrievalHParams.embedding_dim)
    hp.Choice("history_encoder", ["mean", "gru", "attention"], default=RetrievalHParams.history_encoder)
    return hp


def ranking_search_space():
    """The ranking search space, a ``keras_tuner.HyperParameters``."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Float("learning_rate", 3e-4, 1e-2, sampling="log", default=RankingHParams.learning_rate)
    hp.Choice("embedding_dim", [16, 32, 64], default=RankingHParams.embedding_dim)
    hp.Int("num_cross_layers", 1, 3, default=RankingHParams.num_cross_layers)
    hp.Choice("dropout", [0.0, 0.1, 0.2, 0.3], default=RankingHParams.dropout)
    return hp


SEARCH_SPACES: dict[str, Callable[[], Any]] = {RETRIEVAL: retrieval_search_space, RANKING: ranking_search_space}
# (metric name, direction) of each model's tuning objective (see the module docstring).
OBJECTIVES = {RETRIEVAL: ("val_recall_at_100", "max"), RANKING: ("val_loss", "min")}


# --- best hyper-parameters -> trainer config ---------------------------------------------

def hyperparameter_values(hyperparameters) -> dict[str, Any]:
    """The tuned values from what TFX hands run_fn as ``fn_args.hyperparameters``.

    That is ``keras_tuner.HyperParameters.get_config()`` of the best trial, read back
    from the Tuner's ``best_hyperparameters.txt`` JSON: ``{"space": [{"class_name":
    "Float", "config": {...}}, ...], "values": {"learning_rate": 0.0012, ...}}``.
    Also accepted: a ``keras_tuner.HyperParameters`` or a plain ``{name: value}``
    mapping; ``None`` (no Tuner upstream) gives no values.
    """
    if hyperparameters is None:
        return {}
    if hasattr(hyperparameters, "get_config") and hasattr(hyperparameters, "values"):  # keras_tuner.HyperParameters
        values = hyperparameters.values
    elif isinstance(hyperparameters, dict):
        values = hyperparameters["values"] if "values" in hyperparameters else hyperparameters
    else:
        raise ValueError(f"hyperparameters: expected a HyperParameters config dict, got {type(hyperparameters)}")
    if not isinstance(values, dict):
        raise ValueError(f"hyperparameters: 'values' must be a mapping, got {values!r}")
    # KerasTuner's own bookkeeping entries (Hyperband's tuner/epochs, ...) are not hyper-parameters.
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}


def apply_best_hyperparameters(trainer_cfg: dict | None, hyperparameters: dict | None, kind: str) -> dict:
    """A new trainer config dict with the tuned values set in ``trainer_cfg[kind]``.

    ``trainer_cfg``: the ``trainer`` section (as in the Trainers' custom_config);
    ``hyperparameters``: ``fn_args.hyperparameters`` (see ``hyperparameter_values``),
    ``None`` when tuning is off (the config comes back unchanged, as a copy);
    ``kind``: ``"retrieval"`` or ``"ranking"``. Tuned values override configured ones.
    Names that are not fields of that model's hparams, or values the trainer would
    reject, are errors. The input is not modified.
    """
    if kind not in HPARAMS:
        raise ValueError(f"kind must be one of {sorted(HPARAMS)}, got {kind!r}")
    out = copy.deepcopy(dict(trainer_cfg or {}))
    values = hyperparameter_values(hyperparameters)
    if not values:
        return out
    fields = {f.name for f in dataclasses.fields(HPARAMS[kind])}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"tuned hyper-parameter(s) {unknown} are not trainer.{kind} keys; allowed: {sorted(fields)}")
    section = dict(out.get(kind) or {})
    section.update(values)
    out[kind] = section
    parse_trainer_config(out)  # types and allowed values, checked as the trainer will
    return out


# --- the tuner ---------------------------------------------------------------------------

@functools.cache
def _trial_tuner_class():
    from keras_tuner.engine import base_tuner
    from keras_tuner import errors

    class TrialTuner(base_tuner.BaseTuner):
        """A KerasTuner tuner whose trial is one call: hyper-parameter values -> metrics dict.

        The trials run the trainers' own (tf-keras) training code; KerasTuner's ``Tuner``
        class would drive ``fit`` with Keras 3 callbacks, which tf-keras models reject.
        A failing trial stops the search (``FatalError``) instead of being skipped.
        """

        def __init__(self, oracle, trial_fn: Callable[[dict], dict], **kwargs):
            super().__init__(oracle=oracle, hypermodel=None, **kwargs)
            self.trial_fn = trial_fn

        def run_trial(self, trial, *fit_args, **fit_kwargs) -> dict:
            try:
                return self.trial_fn(dict(trial.hyperparameters.values))
            except Exception as e:  # noqa: BLE001  (re-raised, with the cause chained)
                raise errors.FatalError(f"tuning trial {trial.trial_id} failed: {e!r}") from e

        def save_model(self, trial_id, model, step=0):
            pass  # models are not kept; the Trainer retrains with the best values

        def load_model(self, trial):
            raise NotImplementedError("tuning trials do not keep models; train with the best hyper-parameters")

    return TrialTuner


def make_tuner(oracle, trial_fn: Callable[[dict], dict], **kwargs):
    """A ``TrialTuner`` (a KerasTuner ``BaseTuner``): each trial is ``trial_fn(values) -> metrics``."""
    return _trial_tuner_class()(oracle, trial_fn, **kwargs)


def make_oracle(tuning: TuningConfig, kind: str):
    import keras_tuner as kt

    common = dict(objective=kt.Objective(*OBJECTIVES[kind]), max_trials=tuning.max_trials,
                  hyperparameters=SEARCH_SPACES[kind](), allow_new_entries=False, tune_new_entries=False,
                  seed=tuning.seed)
    if tuning.algorithm == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(**common)
    return kt.oracles.RandomSearchOracle(**common)


def _early_stopping(patience: int):
    import tensorflow as tf

    # As trainer/training_setup.fit_callbacks (the best eval-loss epoch's weights are kept).
    return tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)


def _best_epoch(history: dict) -> int:
    return int(np.argmin(history["val_loss"]))


class RetrievalTrials:
    """Data read and transformed once; each call trains + evaluates one retrieval configuration."""

    def __init__(self, examples_uri: str, transform_dir: str, side_features: dict, history_length: int,
                 trainer_cfg: dict, epochs: int):
        import tensorflow as tf

        from trainer import export, features as F, raw_data, retrieval_trainer
        from trainer.retrieval.model import add_sampling_probability
        from trainer.training_setup import prepare

        self.examples_uri, self.history_length, self.epochs = examples_uri, history_length, epochs
        self.trainer_cfg = trainer_cfg
        hp = parse_trainer_config(trainer_cfg).retrieval
        self.ctx = prepare(examples_uri, transform_dir, side_features, hp.seed, hp.mixed_precision)
        ctx, spec, layout = self.ctx, self.ctx.raw_spec, self.ctx.layout
        # Datasets as in retrieval_trainer.train_and_export (batch size and seed are not tuned).
        counts = np.zeros(layout.num_items, dtype=np.int64)
        for ids in ctx.train_rows.map(lambda row: row[F.ITEM_ID_IDX]).batch(8192):
            np.add.at(counts, ids.numpy(), 1)
        sampling = add_sampling_probability(tf.constant(counts + 1))
        batch_size = hp.batch_size * ctx.replicas
        self.train_ds = raw_data.batched(ctx.train_rows, batch_size, True, hp.seed, sampling)
        self.eval_ds = raw_data.batched(ctx.eval_rows, batch_size, False, hp.seed, sampling)
        # Candidates (every catalogue item) as model inputs, and the stored user state.
        items = raw_data.read_numpy(raw_data.split_files(examples_uri, "items"),
                                    raw_data.subset_spec(spec, raw_data.item_keys(spec)))
        item_lists = [k for k, v in ctx.item_features.items() if v == F.MULTI_VALUED]
        self.item_inputs = export.raw_to_model_inputs({k: tf.constant(v) for k, v in items.items()}, ctx.tft_layer,
                                                      layout, list_keys=item_lists)
        self.item_ids = retrieval_trainer._as_str(items[F.ITEM_ID])
        self.users = raw_data.read_numpy(raw_data.split_files(examples_uri, "users"),
                                         raw_data.subset_spec(spec, raw_data.user_state_keys(spec)))

    def __call__(self, values: dict) -> dict:
        import tensorflow as tf

        from trainer import export, retrieval_trainer
        from trainer.retrieval.model import RetrievalModel
        from trainer.encoders import build_towers

        hp = parse_trainer_config(apply_best_hyperparameters(self.trainer_cfg, values, RETRIEVAL)).retrieval
        ctx = self.ctx
        tf.keras.utils.set_random_seed(hp.seed)  # every trial starts from the same seed
        with ctx.strategy.scope():  # as retrieval_trainer.train_and_export
            query_tower, candidate_tower = build_towers(ctx.layout, hp, self.history_length)
            model = RetrievalModel(query_tower, candidate_tower, hp)
            model.compile(optimizer=tf.keras.optimizers.Adam(hp.learning_rate))
        fit = model.fit(self.train_ds, validation_data=self.eval_ds, epochs=self.epochs,
                        callbacks=[_early_stopping(hp.early_stopping_patience)], verbose=2)
        cand_emb = candidate_tower(self.item_inputs, training=False).numpy()
        resolver = export.QueryResolver(ctx.tft_layer, query_tower, ctx.layout, ctx.user_features, self.users,
                                        self.history_length)
        # The popularity baseline is not needed here: zero counts.
        metrics, _ = retrieval_trainer.evaluate(self.examples_uri, ctx.raw_spec, resolver, cand_emb, self.item_ids,
                                                ctx.user_features, np.zeros(len(self.item_ids)))
        m = metrics["model"]
        out = {"val_recall_at_100": m["recall@100"], "val_recall_at_10": m["recall@10"], "val_ndcg_at_10": m["ndcg@10"],
               "val_loss": float(fit.history["val_loss"][_best_epoch(fit.history)])}
        log(f"tuning retrieval: {values} -> {out}")
        return out


class RankingTrials:
    """Data read and transformed once; each call trains + evaluates one ranking configuration."""

    def __init__(self, examples_uri: str, transform_dir: str, side_features: dict, history_length: int,
                 trainer_cfg: dict, epochs: int):
        from trainer import ranking_trainer, raw_data
        from trainer.training_setup import prepare

        self.history_length, self.epochs, self.trainer_cfg = history_length, epochs, trainer_cfg
        hp = parse_trainer_config(trainer_cfg).ranking
        self.ctx = prepare(examples_uri, transform_dir, side_features, hp.seed, hp.mixed_precision)
        ctx = self.ctx
        # Datasets and head initialisation as in ranking_trainer.train_and_export.
        self.rating_mean, self.engaged_rate, _, _ = ranking_trainer._train_stats(ctx.train_rows, ctx.layout.num_items)
        batch_size = hp.batch_size * ctx.replicas
        train_rows, _ = ranking_trainer._with_exposures(ctx, examples_uri, hp.use_exposures)  # as train_and_export
        self.train_ds = raw_data.batched(train_rows, batch_size, True, hp.seed)
        self.eval_ds = raw_data.batched(ctx.eval_rows, batch_size, False, hp.seed)

    def __call__(self, values: dict) -> dict:
        import tensorflow as tf

        from trainer.ranking.model import RankingModel

        hp = parse_trainer_config(apply_best_hyperparameters(self.trainer_cfg, values, RANKING)).ranking
        ctx = self.ctx
        tf.keras.utils.set_random_seed(hp.seed)
        with ctx.strategy.scope():  # as ranking_trainer.train_and_export
            model = RankingModel(ctx.layout, hp, self.history_length, rating_mean=self.rating_mean,
                                 engagement_rate=self.engaged_rate)
            model.compile(optimizer=tf.keras.optimizers.Adam(hp.learning_rate))
        fit = model.fit(self.train_ds, validation_data=self.eval_ds, epochs=self.epochs,
                        callbacks=[_early_stopping(hp.early_stopping_patience)], verbose=2)
        best = _best_epoch(fit.history)
        out = {"val_loss": float(fit.history["val_loss"][best])}
        for name in ("val_rmse", "val_auc"):  # the heads' metrics (ranking_model.py), same epoch
            if name in fit.history:
                out[name] = float(fit.history[name][best])
        log(f"tuning ranking: {values} -> {out}")
        return out


TRIALS = {RETRIEVAL: RetrievalTrials, RANKING: RankingTrials}


def build_tuner(kind: str, examples_uri: str, transform_dir: str, side_features: dict, history_length: int,
                trainer_cfg: dict, directory: str):
    """The tuner for one model; ``trainer_cfg`` is the trainer section (with ``tuning``)."""
    tuning = parse_trainer_config(trainer_cfg).tuning
    trials = TRIALS[kind](examples_uri, transform_dir, side_features, history_length, trainer_cfg,
                          tuning.epochs_per_trial)
    log(f"tuning {kind}: {tuning.algorithm} search, {tuning.max_trials} trial(s) of {tuning.epochs_per_trial} "
        f"epoch(s), objective {OBJECTIVES[kind][0]} ({OBJECTIVES[kind][1]})")
    return make_tuner(make_oracle(tuning, kind), trials, directory=directory, project_name=f"{kind}_tuning",
                      overwrite=True)


def _tuner_fn(fn_args, kind: str):
    from tfx import v1 as tfx

    from trainer import raw_data

    cc = fn_args.custom_config or {}
    tuner = build_tuner(
        kind,
        examples_uri=raw_data.examples_root(fn_args.train_files),
        transform_dir=fn_args.transform_graph_path or fn_args.transform_output,
        side_features=cc["side_features"],
        history_length=cc["history_length"],
        trainer_cfg=cc.get("trainer", {}),
        directory=fn_args.working_dir or tempfile.mkdtemp(prefix=f"{kind}_tuning_"),
    )
    # The trials hold their data; nothing is passed through search().
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={})


def retrieval_tuner_fn(fn_args):
    """TFX Tuner entry point for the two-tower retrieval model.

    custom_config: {"side_features": ..., "history_length": N,
                    "trainer": {"retrieval": {...}, "tuning": {...}}}
    """
    return _tuner_fn(fn_args, RETRIEVAL)


def ranking_tuner_fn(fn_args):
    """TFX Tuner entry point for the DCN-v2 ranking model (custom_config as retrieval, "ranking" section)."""
    return _tuner_fn(fn_args, RANKING)
