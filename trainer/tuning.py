"""Optional hyper-parameter search before each Trainer: TFX Tuner ``tuner_fn``s (KerasTuner).

Off by default; ``trainer.tuning.enabled: true`` adds a ``RetrievalTuner`` and a
``RankingTuner`` to the pipeline (tfx_pipeline/wiring/training.py), and each Trainer
receives its Tuner's best hyper-parameters (``fn_args.hyperparameters``, applied to
the trainer config by trainer/skeleton.py ``run_fn`` with ``hparams.with_tuned_values``). Tuning settings
(trainer/hparams.py ``TuningConfig``)::

    trainer:
      tuning: {enabled: true, max_trials: 4, epochs_per_trial: 2, algorithm: random|bayesian, seed: 0,
               time_budget_s: 3600}

Search spaces (the defaults are the trainer defaults of trainer/hparams.py; every
other hyper-parameter keeps its configured value):

retrieval (two-tower, ``trainer.retrieval``)
    learning_rate    float in [3e-4, 1e-2], log-uniform
    temperature      one of 0.02, 0.05, 0.1, 0.2 (in-batch softmax over cosine / temperature)
    embedding_dim    one of 32, 64, 128 (tower output size)
    history_encoder  one of mean, gru, attention, sasrec

ranking (DCN-v2 multitask, ``trainer.ranking``)
    learning_rate     float in [3e-4, 1e-2], log-uniform
    embedding_dim     one of 16, 32, 64
    num_cross_layers  integer in [1, 3]
    dropout           one of 0.0, 0.1, 0.2, 0.3

Objectives, computed on the validation split carved from train (trainer/skeleton.py;
``trainer.selection``) at the epoch early stopping keeps; the eval split is never read
by a trial, so the Trainer's final figures and the gates stay unbiased:

- retrieval: ``val_selection``, the user-level ``trainer.selection.retrieval_metric``
  (default Recall@100, maximized), the protocol of the trainer's evaluation, scored as
  served (with the popularity prior the trial picks on the same split). Not the
  loss: the in-batch softmax loss changes scale with ``temperature``, so losses of
  trials with different temperatures are not comparable.
- ranking: ``val_loss`` (minimized), ``rating_loss_weight * MSE +
  engagement_loss_weight * BCE`` per example over the whole validation split
  (``val_loss_per_example``; Keras' own ``val_loss`` is the last batch's): the trade-off between the two heads that the
  config states and that early stopping selects on. Validation RMSE and AUC are
  recorded with every trial too.

Each trial builds and trains the model with the trainers' own code (trainer/skeleton.py
``fit_and_evaluate`` with the model's recipe, without refit); the data is read and
transformed once per search.
Models are not kept: the Trainer trains from scratch with the best values.
"""

from __future__ import annotations

import functools
import tempfile
import time
from typing import Any, Callable

# KerasTuner (which imports Keras 3) and the model recipes are imported where used: the
# pipeline wiring imports this module to name the tuner_fns without loading TensorFlow.
from trainer.hparams import RankingHParams, RetrievalHParams, TrainerConfig, TuningConfig, trainer_config, with_tuned_values
from trainer.splits import SplitConfig
from trainer.training_logs import log
from trainer.typed_config import ConfigError, build

RETRIEVAL = "retrieval"
RANKING = "ranking"


def retrieval_search_space(base: RetrievalHParams | None = None):
    """The retrieval search space, a ``keras_tuner.HyperParameters``; under the sequence
    objective (``base.objective``) only the encoders with a causal form are tried."""
    import keras_tuner as kt

    encoders = ["mean", "gru", "attention", "sasrec"]
    if base is not None and base.objective == "sequence":
        encoders.remove("attention")

    hp = kt.HyperParameters()
    hp.Float("learning_rate", 3e-4, 1e-2, sampling="log", default=RetrievalHParams.learning_rate)
    hp.Choice("temperature", [0.02, 0.05, 0.1, 0.2], default=RetrievalHParams.temperature)
    hp.Choice("embedding_dim", [32, 64, 128], default=RetrievalHParams.embedding_dim)
    hp.Choice("history_encoder", encoders, default=RetrievalHParams.history_encoder)
    return hp


def ranking_search_space(base: RankingHParams | None = None):
    """The ranking search space, a ``keras_tuner.HyperParameters``."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Float("learning_rate", 3e-4, 1e-2, sampling="log", default=RankingHParams.learning_rate)
    hp.Choice("embedding_dim", [16, 32, 64], default=RankingHParams.embedding_dim)
    hp.Int("num_cross_layers", 1, 3, default=RankingHParams.num_cross_layers)
    hp.Choice("dropout", [0.0, 0.1, 0.2, 0.3], default=RankingHParams.dropout)
    return hp


SEARCH_SPACES: dict[str, Callable[..., Any]] = {RETRIEVAL: retrieval_search_space, RANKING: ranking_search_space}
# (metric name, direction) of each model's tuning objective (see the module docstring).
OBJECTIVES = {RETRIEVAL: ("val_selection", "max"), RANKING: ("val_loss", "min")}


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

        def __init__(self, oracle, trial_fn: Callable[[dict], dict], time_budget_s: float = 0.0, **kwargs):
            super().__init__(oracle=oracle, hypermodel=None, **kwargs)
            self.trial_fn, self.time_budget_s, self.started = trial_fn, time_budget_s, None

        def on_search_begin(self):
            super().on_search_begin()
            self.started = time.monotonic()

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            elapsed = time.monotonic() - (self.started or time.monotonic())
            done = len(self.oracle.trials)
            if self.time_budget_s and elapsed >= self.time_budget_s and done < self.oracle.max_trials:
                # The oracle ends the search when max_trials trials exist: no new trial starts.
                log(f"tuning: time budget {self.time_budget_s:.0f} s spent after {done} trial(s) "
                    f"({elapsed:.0f} s); stopping the search with the best so far")
                self.oracle.max_trials = done

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


def make_tuner(oracle, trial_fn: Callable[[dict], dict], time_budget_s: float = 0.0, **kwargs):
    """A ``TrialTuner`` (a KerasTuner ``BaseTuner``): each trial is ``trial_fn(values) -> metrics``.

    ``time_budget_s`` > 0: no trial starts once the search has run that long (a running
    trial finishes); the best trial so far is the result.
    """
    return _trial_tuner_class()(oracle, trial_fn, time_budget_s=time_budget_s, **kwargs)


def make_oracle(tuning: TuningConfig, kind: str, base=None):
    """``base``: the section's configured hyper-parameters (the space leaves out what they rule out)."""
    import keras_tuner as kt

    common = dict(objective=kt.Objective(*OBJECTIVES[kind]), max_trials=tuning.max_trials,
                  hyperparameters=SEARCH_SPACES[kind](base), allow_new_entries=False, tune_new_entries=False,
                  seed=tuning.seed)
    if tuning.algorithm == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(**common)
    return kt.oracles.RandomSearchOracle(**common)


class Trials:
    """Data read and transformed once per search; each call trains one configuration and
    returns its validation figures.

    The trial is the trainers' own code: ``skeleton.fit_and_evaluate`` with the model's
    recipe (build, fit with early stopping on the validation split carved from train),
    without refit, export or warm start; the eval split is never read for a trial.
    """

    def __init__(self, kind: str, examples_uri: str, transform_dir: str, side_features: dict, history_length: int,
                 config: TrainerConfig, epochs: int, split: SplitConfig | None = None, sequence_length: int = 0):
        from trainer import skeleton

        self.kind, self.config, self.epochs = kind, config, epochs
        self.recipe = _recipe(kind)
        hp = getattr(config, kind)
        self.data = skeleton.load_data(examples_uri, transform_dir, side_features, history_length,
                                       self.recipe.raw_keys(side_features), hp.seed,
                                       split or SplitConfig(), config.selection, sequence_length)
        if self.data.validation is None:
            raise ConfigError("tuning needs a validation split (trainer.selection.validation true, and a train "
                              "split long enough to carve one): trials are never scored on the eval split")

    def __call__(self, values: dict) -> dict:
        from trainer import skeleton

        hp = getattr(with_tuned_values(self.config, self.kind, values), self.kind)
        result = skeleton.fit_and_evaluate(self.recipe, self.data, hp, self.config.selection, epochs=self.epochs,
                                           evaluate=False)
        best = result.selection["best_epoch"] - 1
        val_loss = result.history.get("val_loss_per_example", result.history["val_loss"])  # whole split, if logged
        # What would be served: with retrieval's popularity prior when one was picked (served_value).
        served = result.selection.get("served_value", result.selection["best_value"])
        out = {"val_selection": served, "val_loss": float(val_loss[best]),
               "selection_metric": result.selection["metric"]}
        if self.kind == RANKING:
            for name in ("val_rmse", "val_auc"):  # the heads' metrics (ranking/model.py), same epoch
                if name in result.history:
                    out[name] = float(result.history[name][best])
        log(f"tuning {self.kind}: {values} -> {out}")
        return {k: v for k, v in out.items() if k != "selection_metric"}


def _recipe(kind: str):
    if kind == RETRIEVAL:
        from trainer.retrieval.train import RECIPE
    else:
        from trainer.ranking.train import RECIPE
    return RECIPE


def build_tuner(kind: str, examples_uri: str, transform_dir: str, side_features: dict, history_length: int,
                config: TrainerConfig, directory: str, split: SplitConfig | None = None, sequence_length: int = 0):
    """The tuner for one model; ``config`` is the typed trainer config (with ``tuning``)."""
    tuning = config.tuning
    trials = Trials(kind, examples_uri, transform_dir, side_features, history_length, config,
                    tuning.epochs_per_trial, split, sequence_length)
    log(f"tuning {kind}: {tuning.algorithm} search, {tuning.max_trials} trial(s) of {tuning.epochs_per_trial} "
        f"epoch(s), objective {OBJECTIVES[kind][0]} ({OBJECTIVES[kind][1]})")
    return make_tuner(make_oracle(tuning, kind, getattr(config, kind)), trials, time_budget_s=tuning.time_budget_s, directory=directory,
                      project_name=f"{kind}_tuning", overwrite=True)


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
        sequence_length=int(cc.get("sequence_length", 0)),
        config=trainer_config(cc.get("trainer", {})),
        split=build(SplitConfig, cc.get("split", {}), "split"),
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
