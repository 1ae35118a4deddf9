"""Typed hyper-parameters for the trainers, the gate and the index; unknown keys are errors.

Parsed from the ``trainer:`` section of a dataset config::

    trainer:
      retrieval: {epochs: 8, history_encoder: gru}
      ranking: {epochs: 4}
      gate: {min_recall_at_100: 0.1}
      index: {recall_floor: 0.95}
      tuning: {enabled: false, max_trials: 4}   # optional KerasTuner step (trainer/tuning.py)
"""

from __future__ import annotations

import dataclasses
import json

from trainer.typed_config import ConfigError, build, one_of, to_dict


def check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


HISTORY_ENCODERS = ("mean", "gru", "attention", "sasrec")


@dataclasses.dataclass(frozen=True)
class RetrievalHParams:
    embedding_dim: int = 64  # tower output size; 64 is TFRS's usual default
    id_embedding_dim: int = 48  # user/item id embeddings
    feature_embedding_dim: int = 16  # small vocabularies (genres, occupation, buckets)
    hidden_units: tuple[int, ...] = (128,)
    history_encoder: str = "mean"  # mean | gru | attention | sasrec (measured in bench/ablation.py)
    attention_heads: int = 2
    sequence_blocks: int = 2  # causal Transformer blocks of the sasrec encoder
    use_user_id: bool = True
    use_item_id: bool = True
    use_content_features: bool = True  # item title/genres/year and user side features
    use_context: bool = True  # hour, weekday, recency
    # Share of training rows whose context is replaced by "unknown" (what a request
    # without context sends), so such requests score with trained weights.
    context_dropout: float = 0.1
    use_history: bool = True
    logq_correction: bool = True  # subtract log(sampling probability) from in-batch logits
    remove_accidental_hits: bool = True
    num_hard_negatives: int = 0  # >0: keep only the top-n scoring in-batch negatives per row
    temperature: float = 0.05  # logits are cosine similarities / temperature
    batch_size: int = 512
    learning_rate: float = 0.003
    epochs: int = 8
    early_stopping_patience: int = 2
    dropout: float = 0.1
    mixed_precision: bool = False  # only applied on GPU
    seed: int = 42
    max_k: int = 100  # largest k the exported recommend signature serves
    exclusion_pad: int = 100  # extra candidates fetched from ScaNN to drop history items

    def __post_init__(self):
        one_of("history_encoder", self.history_encoder, HISTORY_ENCODERS)
        if self.sequence_blocks < 1 or self.attention_heads < 1:
            raise ConfigError("sequence_blocks and attention_heads must be >= 1")
        check_rate("context_dropout", self.context_dropout)


@dataclasses.dataclass(frozen=True)
class RankingHParams:
    embedding_dim: int = 32
    num_cross_layers: int = 2
    deep_units: tuple[int, ...] = (256, 128)
    rating_loss_weight: float = 1.0
    engagement_loss_weight: float = 1.0
    batch_size: int = 1024
    learning_rate: float = 0.002
    epochs: int = 4
    early_stopping_patience: int = 1
    dropout: float = 0.1
    context_dropout: float = 0.1  # as in RetrievalHParams
    mixed_precision: bool = False
    seed: int = 42
    # Train on logged exposures the user did not act on (the examples' ``exposures`` split,
    # from `recsys feedback build-span`) as engagement negatives, rating loss weight 0.
    use_exposures: bool = True

    def __post_init__(self):
        check_rate("context_dropout", self.context_dropout)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    # Absolute floors a model must reach to be blessed.
    min_recall_at_100: float = 0.0
    min_auc: float = 0.5
    max_rmse: float = 10.0
    # Must beat the popularity baseline on Recall@100 by this factor (1.0 = at least equal).
    min_lift_over_popularity: float = 1.0
    # Change thresholds against the latest blessed model: a drop larger than this fails.
    max_recall_drop: float = 0.01
    max_auc_drop: float = 0.01
    max_rmse_increase: float = 0.02


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    recall_floor: float = 0.95  # ScaNN recall@10 against exact search, or the run fails
    num_eval_queries: int = 500
    seed: int = 0


TUNING_ALGORITHMS = ("random", "bayesian")


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """The optional TFX Tuner step before each Trainer (search spaces in trainer/tuning.py)."""

    enabled: bool = False  # off: no Tuner components, the trainers use the values above as given
    max_trials: int = 4  # hyper-parameter sets tried per model
    epochs_per_trial: int = 2  # training epochs of each trial (early stopping still applies)
    algorithm: str = "random"  # random | bayesian (KerasTuner oracles)
    seed: int = 0  # the oracle's sampling seed

    def __post_init__(self):
        one_of("algorithm", self.algorithm, TUNING_ALGORITHMS)
        if self.max_trials < 1 or self.epochs_per_trial < 1:
            raise ConfigError("max_trials and epochs_per_trial must be >= 1")


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    # Start from the latest blessed model's weights when one exists (trainer/warm_start.py);
    # false forces a cold start.
    enabled: bool = True
    # Epochs when warm-started; 0 = the model's own ``epochs`` (early stopping still applies).
    epochs: int = 0
    # Learning rate when warm-started, as a multiple of the model's own (fine-tuning).
    learning_rate_scale: float = 1.0


SELECTION_METRICS = tuple(f"{name}@{k}" for name in ("recall", "ndcg") for k in (10, 50, 100))


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Model selection on a validation split carved from train (trainer/skeleton.py).

    Early stopping, best-epoch restore and the Tuner's objective look at the validation
    split only; the eval split gives the final figures and the gates.
    """

    validation: bool = True  # false: no validation split, fixed epochs, no early stopping
    # Share of the train split held out, carved with the eval split's strategy (the time
    # tail, or each user's latest events); 0 = the eval split's own eval_fraction.
    validation_fraction: float = 0.0
    # What retrieval's early stopping keeps the best epoch of: user-level, on validation.
    retrieval_metric: str = "recall@100"
    # After selection, train again on all of train for the selected number of epochs
    # (the validation rows are the most recent: a model without them is a stale one).
    refit: bool = True

    def __post_init__(self):
        one_of("retrieval_metric", self.retrieval_metric, SELECTION_METRICS)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    retrieval: RetrievalHParams = RetrievalHParams()
    ranking: RankingHParams = RankingHParams()
    gate: GateConfig = GateConfig()
    index: IndexConfig = IndexConfig()
    tuning: TuningConfig = TuningConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    selection: SelectionConfig = SelectionConfig()


def trainer_config(raw: dict | str | None) -> TrainerConfig:
    """The typed trainer section from its mapping (or its JSON, as run_fns receive it)."""
    if isinstance(raw, str):
        raw = json.loads(raw)
    return build(TrainerConfig, raw or {}, "trainer")


def sections(cfg: TrainerConfig) -> dict:
    """``cfg`` as plain mappings, one per section (what components receive as JSON)."""
    return to_dict(cfg)


def with_tuned_values(cfg: TrainerConfig, kind: str, values: dict) -> TrainerConfig:
    """``cfg`` with the Tuner's best values set in section ``kind`` (retrieval | ranking).

    Names that are not fields of that section, or values it rejects, are ``ConfigError``s.
    """
    if not values:
        return cfg
    current = getattr(cfg, kind)
    fields = {f.name for f in dataclasses.fields(current)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"tuned hyper-parameter(s) {unknown} are not trainer.{kind} keys; allowed: {sorted(fields)}")
    section = {**to_dict(current), **values}
    return dataclasses.replace(cfg, **{kind: build(type(current), section, f"trainer.{kind}")})


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
        raise ConfigError(f"hyperparameters: expected a HyperParameters config dict, got {type(hyperparameters)}")
    if not isinstance(values, dict):
        raise ConfigError(f"hyperparameters: 'values' must be a mapping, got {values!r}")
    # KerasTuner's own bookkeeping entries (Hyperband's tuner/epochs, ...) are not hyper-parameters.
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}
