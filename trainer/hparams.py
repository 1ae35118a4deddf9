"""Typed hyper-parameters for the trainers, the gate and the index; unknown keys are errors.

Parsed from the ``trainer:`` section of a dataset config::

    trainer:
      retrieval: {epochs: 8, history_encoder: gru}
      ranking: {epochs: 4}
      gate: {min_recall_at_100: 0.1, min_lift_over_baseline: 1.0}
      baseline: {kind: als, factors: 0}           # the classical baseline (trainer/retrieval/classical.py)
      index: {recall_floor: 0.95}
      tuning: {enabled: false, max_trials: 4}   # optional KerasTuner step (trainer/tuning.py)
      evaluation: {cold_user_max_events: -1}    # beyond-accuracy metrics and slices (EvaluationConfig)
"""

from __future__ import annotations

import dataclasses
import json

from trainer.typed_config import ConfigError, build, one_of, to_dict


def check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


HISTORY_ENCODERS = ("mean", "gru", "attention", "sasrec")
OBJECTIVES = ("in_batch", "sequence")
NEGATIVES = ("in_batch", "catalogue")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class RetrievalHParams:
    embedding_dim: int = 64  # tower output size; 64 is TFRS's usual default
    # User/item id embeddings; 0 = derived from the data's events per id (trainer/data_defaults.py:
    # 48 on MovieLens, 16 on a sparse log; a warm-started run keeps its base model's size).
    id_embedding_dim: int = 0
    feature_embedding_dim: int = 16  # small vocabularies (genres, occupation, buckets)
    hidden_units: tuple[int, ...] = (128,)
    # mean | gru | attention | sasrec; gru had the best validation figure on every split measured
    # (bench/ablation.py; README "History encoders")
    history_encoder: str = "gru"
    attention_heads: int = 2
    sequence_blocks: int = 2  # causal Transformer blocks of the sasrec encoder
    use_user_id: bool = True
    use_item_id: bool = True
    use_content_features: bool = True  # item title/genres/year and user side features
    use_context: bool = True  # hour, weekday, recency
    # Share of training rows whose context is replaced by "unknown" (what a request
    # without context sends), so such requests score with trained weights.
    context_dropout: float = 0.1
    # Share of training rows whose user id is replaced by the vocabulary's OOV row (where a user
    # unseen in training lands), so new users are queried with trained weights, not the row's
    # random initial vector (trainer/model_inputs.py drop_user_id).
    user_id_dropout: float = 0.0
    use_history: bool = True
    logq_correction: bool = True  # subtract log(sampling probability) from in-batch logits
    remove_accidental_hits: bool = True
    num_hard_negatives: int = 0  # >0: keep only the top-n scoring in-batch negatives per row
    # >0: this many catalogue items drawn uniformly per batch join the in-batch negatives
    # (mixed negative sampling; logQ-corrected for the mixture).
    uniform_negatives: int = 0
    temperature: float = 0.05  # logits are cosine similarities / temperature
    # in_batch: one example row per event, in-batch softmax with the corrections above.
    # sequence: each user's events in time order, every event a next-item target of the
    # prefix before it, full softmax over the catalogue (trainer/retrieval/sequence.py;
    # history_encoder mean, gru or sasrec).
    objective: str = "in_batch"
    sequence_batch_size: int = 128  # windows of history_length events per batch (sequence objective)
    # Events between the ends of a user's consecutive windows (each keeps that many targets);
    # 0 = half of history_length, so every target but a user's first few sees at least half
    # a served history; history_length = windows side by side (each event in one window).
    sequence_stride: int = 0
    # The per-event objective's negatives: "in_batch" (the batch's other positives, with the
    # corrections above) or "catalogue" (a softmax over every catalogue item at each step, no
    # sampling bias, so no logQ correction; a catalogue over full_softmax_max_items falls back
    # to in_batch and says so). The sequence objective always uses the catalogue up to that size.
    negatives: str = "in_batch"
    # The per-event objective's positive: 1 = the event's own item (the next item after the
    # history); W > 1 = an item drawn anew each epoch from the user's next W train events (this
    # one and the W - 1 after it), so a query learns the user's coming items, not only the next
    # one (the "all-action" target of PinnerFormer, Pancha et al. 2022).
    target_window: int = 1
    # The sequence objective's softmax covers the whole catalogue up to this many items; a
    # larger catalogue falls back to the batch's other targets as negatives (logQ-corrected).
    full_softmax_max_items: int = 50000
    # Served scores are q . c + beta * temperature * log p(item) (trainer/retrieval/prior.py):
    # -1 = beta picked on the validation split after epoch selection (0 without one),
    # 0 = off, > 0 = that beta.
    popularity_prior: float = -1.0
    # The prior of cold users (no train events, no history sent): -1 = picked on the validation
    # split's cold users when it has enough of them (else the same as popularity_prior; a fixed
    # popularity_prior keeps it), 0 = off, > 0 = that beta.
    popularity_prior_cold: float = -1.0
    # -1 above picks a beta for the cold users (no history) and one for the rest; true: one per
    # activity bucket (history items 0 | 1 | 2-3 | 4-7 | 8-15 | 16+) with enough validation users
    # (not the default: no measured gain over cold vs the rest; README "ALS blend and the cold
    # users' prior").
    popularity_prior_by_activity: bool = False
    # Set by the trainer (each bucket's picked beta, in metrics.json); leave empty.
    prior_betas: tuple[float, ...] = ()
    # Served scores add w * (ALS user . ALS item) for users the classical baseline's ALS
    # (trainer.baseline) was fit on (trainer/retrieval/als_blend.py): -1 = w picked on the
    # validation split after the prior (0 without one, or with the baseline disabled),
    # 0 = off, > 0 = that w.
    als_blend: float = -1.0
    batch_size: int = 512
    learning_rate: float = 0.003
    # 0 = derived from the data: at least 8, raised on a small log until training takes
    # ``min_train_steps`` optimizer steps (at most 50; early stopping on validation still
    # ends it). A number > 0 is used as given.
    epochs: int = 0
    min_train_steps: int = 1200
    early_stopping_patience: int = 2
    dropout: float = 0.1
    # L2 weight of the user and item id embedding tables (added to the loss; 0 = off).
    embedding_l2: float = 0.0
    mixed_precision: bool = False  # mixed_float16, only applied on GPU
    # Keras dtype policy on any device: float32 | mixed_float16 | mixed_bfloat16 (e.g. on CPUs
    # with bfloat16 units or TPUs); overrides mixed_precision when not float32.
    precision: str = "float32"
    seed: int = 42
    max_k: int = 100  # largest k the exported recommend signature serves
    exclusion_pad: int = 100  # extra candidates fetched from ScaNN to drop history items

    def __post_init__(self):
        one_of("history_encoder", self.history_encoder, HISTORY_ENCODERS)
        one_of("precision", self.precision, PRECISIONS)
        one_of("objective", self.objective, OBJECTIVES)
        one_of("negatives", self.negatives, NEGATIVES)
        if self.objective == "sequence" and self.history_encoder == "attention":
            raise ConfigError("objective: sequence needs a history_encoder with a causal form (mean, gru or "
                              "sasrec); attention sees the whole history at once")
        if self.sequence_batch_size < 1 or self.full_softmax_max_items < 0 or self.sequence_stride < 0:
            raise ConfigError("sequence_batch_size must be >= 1, full_softmax_max_items and sequence_stride >= 0")
        if self.target_window < 1:
            raise ConfigError(f"target_window must be >= 1 (1: the event's own item), got {self.target_window}")
        if self.sequence_blocks < 1 or self.attention_heads < 1:
            raise ConfigError("sequence_blocks and attention_heads must be >= 1")
        check_rate("context_dropout", self.context_dropout)
        check_rate("user_id_dropout", self.user_id_dropout)
        if self.popularity_prior < 0 and self.popularity_prior != -1:
            raise ConfigError(f"popularity_prior must be -1 (picked on validation), 0 (off) or > 0, "
                              f"got {self.popularity_prior}")
        if self.popularity_prior_cold < 0 and self.popularity_prior_cold != -1:
            raise ConfigError(f"popularity_prior_cold must be -1 (picked on validation), 0 (off) or > 0, "
                              f"got {self.popularity_prior_cold}")
        if self.als_blend < 0 and self.als_blend != -1:
            raise ConfigError(f"als_blend must be -1 (picked on validation), 0 (off) or > 0, got {self.als_blend}")
        if min(self.epochs, self.min_train_steps, self.embedding_l2, self.uniform_negatives, self.id_embedding_dim) < 0:
            raise ConfigError("epochs, min_train_steps, embedding_l2, uniform_negatives and id_embedding_dim must be >= 0")


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
    mixed_precision: bool = False  # as in RetrievalHParams
    precision: str = "float32"  # as in RetrievalHParams
    seed: int = 42
    # Train on logged exposures the user did not act on (the examples' ``exposures`` split,
    # from `recsys feedback build-span`) as engagement negatives, rating loss weight 0.
    use_exposures: bool = True

    def __post_init__(self):
        check_rate("context_dropout", self.context_dropout)
        one_of("precision", self.precision, PRECISIONS)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    # Absolute floors a model must reach to be blessed.
    min_recall_at_100: float = 0.0
    min_auc: float = 0.5
    max_rmse: float = 10.0
    # Must beat the popularity baseline on Recall@100 by this factor (1.0 = at least equal).
    min_lift_over_popularity: float = 1.0
    # Must reach this factor x the classical baseline (trainer.baseline, ALS) on both Recall@100
    # and NDCG@10; 0 disables the check. A baseline that could not be fit fails it; one disabled by
    # trainer.baseline.enabled: false is not checked, and the reasons say so (trainer/gate.py).
    min_lift_over_baseline: float = 1.0
    # Change thresholds against the latest blessed model: a drop larger than this fails.
    max_recall_drop: float = 0.01
    max_auc_drop: float = 0.01
    max_rmse_increase: float = 0.02
    # Slice checks of the retrieval gate on metrics.json "slices" (trainer/gate.py), both off by default.
    # Largest allowed drop of the cold users' Recall@100 against the latest blessed model's cold
    # users'; -1 = off, 0 = no drop allowed. Not checked (and noted) without a blessed model or
    # when either metrics.json has no cold-user slice.
    max_cold_user_recall_drop: float = -1.0
    # Largest allowed best / worst group Recall@100 (the fairness entry's K; groups of at least
    # trainer.evaluation.min_group_users users) per sliced user feature; 0 = off, else >= 1.
    # A worst group with recall 0 fails (unbounded ratio); fewer than two groups is not checked.
    max_group_recall_ratio: float = 0.0

    def __post_init__(self):
        if self.max_cold_user_recall_drop != -1.0 and not 0.0 <= self.max_cold_user_recall_drop <= 1.0:
            raise ConfigError(f"max_cold_user_recall_drop must be in [0, 1] (or -1: off), "
                              f"got {self.max_cold_user_recall_drop}")
        if self.max_group_recall_ratio != 0.0 and not self.max_group_recall_ratio >= 1.0:
            raise ConfigError(f"max_group_recall_ratio must be >= 1 (a best / worst ratio; or 0: off), "
                              f"got {self.max_group_recall_ratio}")


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    recall_floor: float = 0.95  # ScaNN recall@10 against exact search, or the run fails
    num_eval_queries: int = 500
    seed: int = 0


BASELINE_KINDS = ("als",)


@dataclasses.dataclass(frozen=True)
class ClassicalBaselineConfig:
    """The classical retrieval baseline fit on the same train split and scored on the same
    eval task as the model (trainer/retrieval/classical.py); the gate's
    ``min_lift_over_baseline`` compares the model with it.

    Implicit-feedback ALS (Hu, Koren & Volinsky 2008) from the ``implicit`` package, on the
    binary user x item train matrix. The defaults but ``factors`` are bench/baselines.py's: alpha 5 was
    chosen on a validation split carved out of MovieLens-100K's per-user *train* split
    (sweep 1, 2, 5, 10, 20, 40), never on eval; the binary matrix times alpha is the
    confidence of an observed pair (unobserved pairs have confidence 1).
    """

    enabled: bool = True  # false: no baseline is fit; the gate's lift check is skipped (and says so)
    kind: str = "als"  # als (the only one so far)
    # Latent factors; 0 = from the data: train positives / (train users + train items), the
    # most that keeps the free parameters ((users + items) x factors) no more than the observed
    # pairs, at least 1 and at most 128 (ALS's cost grows with factors^2..3). On MovieLens-100K's
    # per-user train split that is 31 (Recall@100 0.5297 vs 0.5276 for bench's fixed 32, one run); a few
    # on tiny data (more memorize the train pairs: tests/trainer/test_classical_baseline.py). A
    # positive value is used as given, capped at min(train users, train items).
    factors: int = 0
    iterations: int = 15  # ALS sweeps
    regularization: float = 0.01  # L2 weight (implicit's default)
    alpha: float = 5.0  # confidence of an observed pair (see above)
    seed: int = 42
    threads: int = 0  # implicit's own threads; 0 = every core (BLAS is held to 1 thread while it fits)

    def __post_init__(self):
        one_of("kind", self.kind, BASELINE_KINDS)
        if self.factors < 0 or self.iterations < 1:
            raise ConfigError("factors must be >= 0 (0: from the data) and iterations >= 1")
        if self.regularization < 0 or self.alpha <= 0 or self.threads < 0:
            raise ConfigError("regularization and threads must be >= 0 and alpha > 0")


TUNING_ALGORITHMS = ("random", "bayesian")


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """The optional TFX Tuner step before each Trainer (search spaces in trainer/tuning.py)."""

    enabled: bool = False  # off: no Tuner components, the trainers use the values above as given
    max_trials: int = 4  # hyper-parameter sets tried per model
    epochs_per_trial: int = 2  # training epochs of each trial (early stopping still applies)
    algorithm: str = "random"  # random | bayesian (KerasTuner oracles)
    seed: int = 0  # the oracle's sampling seed
    # Wall-clock budget of one model's search: no trial starts after it (0 = no limit).
    time_budget_s: float = 3600.0

    def __post_init__(self):
        one_of("algorithm", self.algorithm, TUNING_ALGORITHMS)
        if self.max_trials < 1 or self.epochs_per_trial < 1:
            raise ConfigError("max_trials and epochs_per_trial must be >= 1")
        if self.time_budget_s < 0:
            raise ConfigError(f"time_budget_s must be >= 0 (0 = no limit), got {self.time_budget_s}")


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
    # Retrieval's per-epoch validation ranks the whole catalogue for at most this many
    # validation users (a seeded sample; 0 = all): its cost grows with users x items.
    max_validation_users: int = 20000
    # After selection, train again on all of train for the selected number of epochs
    # (the validation rows are the most recent: a model without them is a stale one).
    refit: bool = True

    def __post_init__(self):
        one_of("retrieval_metric", self.retrieval_metric, SELECTION_METRICS)
        if self.max_validation_users < 0:
            raise ConfigError(f"max_validation_users must be >= 0 (0 = all), got {self.max_validation_users}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """The retrieval evaluation's beyond-accuracy metrics and slices
    (trainer/retrieval/beyond_accuracy.py, trainer/retrieval/slices.py; README "Beyond accuracy")."""

    enabled: bool = True  # false: metrics.json has no "beyond_accuracy" / "slices" / "diagnosis"
    # Cold users: at most this many train events; -1 = from the data: the
    # ``cold_user_percentile``-th percentile of the evaluated users' train events.
    cold_user_max_events: int = -1
    cold_user_percentile: float = 20.0
    # Item popularity buckets from train interaction counts, most popular first: the head
    # makes the first ``head_share`` of the interactions, the torso the next items up to
    # ``tail_share``, the tail the rest (items never seen in train included).
    head_share: float = 0.5
    tail_share: float = 0.8
    # Item feature of the feature diversity (categorical or multi-valued); "" = the first
    # multi-valued one by name, else the first categorical one; "none" = no feature diversity.
    item_feature: str = ""
    # User features to slice by (the retrieval slices here, and the ranking Evaluator's TFMA slices:
    # categorical ones only, trainer/gate.py ranking_slice_features); "*" = every numeric and every categorical user feature with at
    # most max_groups values among the evaluated users (a zip prefix is sliced only when named).
    user_features: tuple[str, ...] = ("*",)
    max_groups: int = 25  # a categorical feature's largest groups kept; the rest pooled as "(other)"
    numeric_bins: int = 4  # quantile bands of a numeric feature with more than max_groups values
    min_group_users: int = 10  # groups smaller than this are shown but left out of the fairness ratio
    report_k: int = 10  # the K of the report's beyond-accuracy and slice tables
    # The diagnosis (metrics.json "diagnosis", trainer/retrieval/diagnosis.py) computes the
    # retrieval permutation importance on a seeded sample of this many evaluated users (all of
    # them when fewer); 0 = no permutation importance.
    importance_users: int = 2000

    def __post_init__(self):
        if self.cold_user_max_events < -1:
            raise ConfigError(f"cold_user_max_events must be >= 0 (or -1: from the data), "
                              f"got {self.cold_user_max_events}")
        if not 0.0 <= self.cold_user_percentile <= 100.0:
            raise ConfigError(f"cold_user_percentile must be in [0, 100], got {self.cold_user_percentile}")
        if not 0.0 < self.head_share < self.tail_share < 1.0:
            raise ConfigError(f"need 0 < head_share < tail_share < 1, got {self.head_share}, {self.tail_share}")
        if self.max_groups < 2 or self.numeric_bins < 2 or self.min_group_users < 1 or self.report_k < 1:
            raise ConfigError("max_groups and numeric_bins must be >= 2, min_group_users and report_k >= 1")
        if self.importance_users < 0:
            raise ConfigError(f"importance_users must be >= 0 (0: no permutation importance), "
                              f"got {self.importance_users}")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    retrieval: RetrievalHParams = RetrievalHParams()
    ranking: RankingHParams = RankingHParams()
    gate: GateConfig = GateConfig()
    baseline: ClassicalBaselineConfig = ClassicalBaselineConfig()
    index: IndexConfig = IndexConfig()
    tuning: TuningConfig = TuningConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    selection: SelectionConfig = SelectionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()


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
