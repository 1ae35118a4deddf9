"""Peer models for the retrieval benchmark; each one scores the same ``EvalTask``.

A model is a *model function* registered under a name::

    @register("my_model")
    def my_model(train_events, task, cfg) -> ScoreFn: ...

A model function may carry a ``setup(cfg)`` attribute, called before it is
timed (e.g. to import TensorFlow, ~10 s, outside the reported train time).
It receives the train split (canonical events: user_id, item_id, timestamp,
rating), the ``trainer.retrieval.metrics.EvalTask`` of the split and a
``BaselineConfig``; it trains and returns a score function ``rows -> [n, num_items]``
(see ``trainer.retrieval.metrics.evaluate_scores``), which the benchmark evaluates with the
shared metric code. ``bench/quality.py`` evaluates every registered model, so a new
model (e.g. the project's own TFRS retrieval model) is added by registering it
here or in a module passed to ``python -m bench.quality --plugin MODULE``.

Conventions shared by all baselines here:

- Every train event is a positive interaction (ratings are ignored, as in the TFRS
  tutorial); repeats count for popularity and collapse to 1 elsewhere.
- Users with no train interactions ("cold" users, only in a global-time split)
  have no learned representation; the learned models rank items for them by train
  popularity, so they degrade to the popularity baseline on those users.
- Everything is seeded by ``BaselineConfig.seed``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from trainer.hparams import ClassicalBaselineConfig
from trainer.retrieval.classical import TrainData, dot_product_scores, fit_als, index_train  # noqa: F401
from trainer.retrieval.metrics import EvalTask, ScoreFn


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """Hyperparameters of the baselines (one object shared by all models).

    Attributes:
        seed: seeds every model's random state.
        epochs: two-tower training epochs (the TFRS tutorial uses 3).
        embedding_dim: two-tower embedding size (tutorial: 32).
        batch_size: two-tower batch size (tutorial: 8192).
        learning_rate: two-tower Adagrad learning rate (tutorial: 0.1).
        shuffle_buffer: two-tower shuffle buffer (tutorial: 100_000).
        als_factors: ALS latent factors (capped at min(train users, train items); 0: from the
            data, as the pipeline's default does).
        als_iterations: ALS sweeps.
        als_regularization: ALS L2 weight (implicit's default, 0.01).
        als_alpha: confidence of a positive in ALS. ``implicit`` uses the matrix values
            as the confidence C_ui of observed pairs (unobserved pairs have C = 1), so
            the binary interaction matrix times alpha gives C_ui = alpha. 1 + 40 x (the
            paper's setting for play counts) over-weights positives on 100K's binary
            data; alpha = 5 was chosen on a validation split carved out of the per-user
            *train* split of MovieLens-100K (sweep 1, 2, 5, 10, 20, 40), never on eval.
            The other ALS defaults are the pipeline's (``trainer.hparams.ClassicalBaselineConfig``).
        num_threads: CPU threads for ALS / BLAS / TensorFlow.
        pipeline: the dataset's pipeline config, for plug-ins that need it (e.g.
            feature tables); None in unit tests.
        extra: free-form options for plug-in models.
    """

    seed: int = 42
    epochs: int = 3
    embedding_dim: int = 32
    batch_size: int = 8192
    learning_rate: float = 0.1
    shuffle_buffer: int = 100_000
    als_factors: int = 32  # fixed (the pipeline's default derives it from the data: 0)
    als_iterations: int = ClassicalBaselineConfig.iterations
    als_regularization: float = ClassicalBaselineConfig.regularization
    als_alpha: float = ClassicalBaselineConfig.alpha
    num_threads: int = 1
    pipeline: Any = None
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("pipeline")
        return d


# (train_events, task, cfg) -> score function
ModelFn = Callable[[pd.DataFrame, EvalTask, BaselineConfig], ScoreFn]
MODELS: dict[str, ModelFn] = {}


def register(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: registers a model function under ``name`` (a duplicate name is an error)."""

    def deco(fn: ModelFn) -> ModelFn:
        if name in MODELS and MODELS[name] is not fn:
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = fn
        return fn

    return deco


# Shared helpers (TrainData, index_train, dot_product_scores) live in trainer/retrieval/classical.py.

# -- models -----------------------------------------------------------------------


@register("random")
def random_scores(train_events: pd.DataFrame, task: EvalTask, cfg: BaselineConfig) -> ScoreFn:
    """Uniform random scores: the floor every model must beat."""

    def score(rows: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([cfg.seed, int(rows[0]) if len(rows) else 0])
        return rng.random((len(rows), task.num_items), dtype=np.float32)

    return score


@register("popularity")
def popularity(train_events: pd.DataFrame, task: EvalTask, cfg: BaselineConfig) -> ScoreFn:
    """Every user gets the items ranked by their number of train events."""
    pop = index_train(train_events, task).item_counts.astype(np.float32)
    pop.setflags(write=False)
    return lambda rows: np.broadcast_to(pop, (len(rows), task.num_items))


@register("als")
def als(train_events: pd.DataFrame, task: EvalTask, cfg: BaselineConfig) -> ScoreFn:
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) from ``implicit``: the pipeline's own
    classical baseline, ``trainer.retrieval.classical.fit_als``.

    ``cfg.als_factors`` factors (capped by the train matrix's shape), ``cfg.als_iterations``
    iterations, ``cfg.als_regularization``, confidence ``cfg.als_alpha`` on the binary
    user x item train matrix (see ``BaselineConfig.als_alpha``), ``random_state=cfg.seed``,
    ``cfg.num_threads`` threads; scores are user_factors @ item_factors.T, popularity for
    cold users.
    """
    params = ClassicalBaselineConfig(factors=cfg.als_factors, iterations=cfg.als_iterations,
                                     regularization=cfg.als_regularization, alpha=cfg.als_alpha, seed=cfg.seed,
                                     threads=cfg.num_threads)
    return fit_als(train_events, task, params).score


def _configure_tf(cfg: BaselineConfig):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import trainer  # noqa: F401  (selects tf-keras before TensorFlow loads)
    import tensorflow as tf

    try:  # only possible before the TF runtime starts
        tf.config.threading.set_intra_op_parallelism_threads(cfg.num_threads)
        tf.config.threading.set_inter_op_parallelism_threads(cfg.num_threads)
    except RuntimeError:
        pass
    tf.keras.utils.set_random_seed(cfg.seed)
    return tf


@register("two_tower_tutorial")
def two_tower_tutorial(train_events: pd.DataFrame, task: EvalTask, cfg: BaselineConfig) -> ScoreFn:
    """The TFRS basic-retrieval tutorial's two-tower model, ids only.

    User tower: user-id embedding; item tower: item-id embedding (both
    ``cfg.embedding_dim``, one OOV user row as the tutorial's StringLookup adds);
    ``tfrs.tasks.Retrieval()`` in-batch softmax loss (no metrics during training);
    Adagrad(``cfg.learning_rate``); batches of ``cfg.batch_size`` from one shuffle
    of the train events, cached, for ``cfg.epochs`` epochs, as in the tutorial.
    Scores are the dot products of the user embedding with every item embedding
    (items absent from train keep their random initial embedding, as there).
    """
    tf = _configure_tf(cfg)
    import tensorflow_recommenders as tfrs

    data = index_train(train_events, task)
    n_users, n_items, dim = len(data.user_ids) + 1, task.num_items, cfg.embedding_dim

    class TwoTower(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.user_embedding = tf.keras.layers.Embedding(n_users, dim)
            self.item_embedding = tf.keras.layers.Embedding(n_items, dim)
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, features, training=False):
            return self.task(
                self.user_embedding(features["user"]), self.item_embedding(features["item"])
            )

    ds = tf.data.Dataset.from_tensor_slices({
        "user": (data.user_rows + 1).astype(np.int32),  # 0 is the OOV row
        "item": data.item_cols.astype(np.int32),
    })
    ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=False)
    ds = ds.batch(cfg.batch_size).cache()
    model = TwoTower()
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=cfg.learning_rate))
    model.fit(ds, epochs=cfg.epochs, verbose=0)
    user_vectors = model.user_embedding.get_weights()[0][1:]
    item_vectors = model.item_embedding.get_weights()[0]
    return dot_product_scores(user_vectors, item_vectors, data)


two_tower_tutorial.setup = _configure_tf  # imports TensorFlow outside the timed training


def get_models(names: Optional[list[str]] = None) -> dict[str, ModelFn]:
    """The registered models, all or the named ones (unknown names are an error)."""
    if not names:
        return dict(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise KeyError(f"unknown model(s) {unknown}; registered: {sorted(MODELS)}")
    return {n: MODELS[n] for n in names}
