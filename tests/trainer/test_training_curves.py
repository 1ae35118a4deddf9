"""The training curves' numbers (trainer/training_logs.py): the loss per example of train and
validation from every batch's loss, however the model's ``compute_loss`` reduces a batch, and the
gradient norms per top-level layer; on tiny hand-made models with frozen weights (learning rate
0), so each figure can be recomputed batch by batch, then through the skeleton on the tiny pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer.training_logs import (MEAN, MEAN_OVER_TARGETS, SUM, SUM_OVER_TARGETS, GradientNormLogger, PerExampleLoss,
                                   loss_reduction)


class _Towers(tfrs.Model):
    """Two one-layer towers; the in-batch softmax (a sum over the rows) or an MSE head (a mean)."""

    def __init__(self, mean: bool = False):
        super().__init__()
        self.query_tower = tf.keras.layers.Dense(4, name="query_tower")
        self.candidate_tower = tf.keras.layers.Dense(4, name="candidate_tower")
        self.mean = mean
        self.task = (tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError()) if mean else
                     tfrs.tasks.Retrieval())

    def compute_loss(self, x, training: bool = False):
        q, c = self.query_tower(x["a"]), self.candidate_tower(x["b"])
        if self.mean:
            return self.task(labels=x["y"], predictions=tf.reduce_sum(q * c, -1, keepdims=True))
        return self.task(q, c, compute_metrics=False)


def _ds(rows: int, batch: int, drop: bool, seed: int) -> tf.data.Dataset:
    rng = np.random.default_rng(seed)
    return tf.data.Dataset.from_tensor_slices({k: rng.normal(size=(rows, w)).astype("float32")
                                               for k, w in (("a", 3), ("b", 3), ("y", 1))}).batch(batch, drop)


def _fit(mean: bool):
    """Trains 2 epochs at learning rate 0: 64 training rows in batches of 16, 37 validation rows
    (batches of 16, 16 and 5). Returns (history, callback, per-batch train and validation losses)."""
    tf.keras.utils.set_random_seed(0)
    model = _Towers(mean)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0))
    train, val = _ds(64, 16, True, 1), _ds(37, 16, False, 2)
    logger = PerExampleLoss(model, train, val)
    history = model.fit(train, validation_data=val, epochs=2, callbacks=[logger], verbose=0).history
    losses = lambda ds: np.array([float(model.compute_loss(b)) for b in ds])  # noqa: E731
    return history, logger, losses(train), losses(val)


def test_sum_loss_per_example_and_the_partial_validation_batch_left_out():
    history, logger, train, val = _fit(mean=False)
    assert logger.reduction == SUM
    # What Keras logs for a tfrs model: the LAST batch's loss, not a mean over the epoch's batches;
    # the validation one is the partial batch of 5 rows.
    assert history["loss"][-1] == pytest.approx(train[-1], rel=1e-5)
    assert history["val_loss"][-1] == pytest.approx(val[-1], rel=1e-5)
    assert history["loss"][-1] != pytest.approx(train.mean(), rel=1e-3)
    # Per example: each training batch's sum over its 16 rows / 16, averaged; validation over its
    # two full batches (32 of 37 rows), the partial one left out.
    assert history["loss_per_example"] == pytest.approx([train.mean() / 16] * 2, rel=1e-5)
    assert history["val_loss_per_example"] == pytest.approx([(val[0] + val[1]) / 32] * 2, rel=1e-5)
    s = logger.scale
    assert (s["train_batch_rows"], s["validation_rows"], s["validation_batches"], s["validation_batch_rows"],
            s["validation_last_batch_rows"], s["validation_rows_used"], s["per_example"]) == (16, 37, 3, 16, 5, 32,
                                                                                              "exact")
    assert "validation over its 2 full batch(es) of 16 rows (32 of 37 rows)" in s["how"]
    assert "the last batch, of 5 rows" in s["how"] and "left out" in s["how"]


def test_mean_loss_per_example_weights_each_validation_batch_by_its_rows():
    history, logger, train, val = _fit(mean=True)
    assert logger.reduction == MEAN
    assert history["loss_per_example"] == pytest.approx([train.mean()] * 2, rel=1e-5)
    assert history["val_loss_per_example"] == pytest.approx([(val * [16, 16, 5]).sum() / 37] * 2, rel=1e-5)
    assert logger.scale["validation_rows_used"] == 37 and logger.scale["per_example"] == "exact"
    assert "validation over all 37 rows, the last batch (5 rows) weighted by its rows" in logger.scale["how"]


def test_loss_reduction_of_the_catalogue_softmax_is_a_mean_and_windows_are_not_examples():
    model = _Towers()
    assert loss_reduction(model) == SUM
    assert loss_reduction(model, rows_are_examples=False) == SUM_OVER_TARGETS  # the sequence objective's fallback
    model.full_softmax = True  # as RetrievalModel's catalogue softmax: tf.reduce_mean over the rows
    assert loss_reduction(model) == MEAN
    assert loss_reduction(model, rows_are_examples=False) == MEAN_OVER_TARGETS
    assert loss_reduction(_Towers(mean=True)) == MEAN  # a Keras loss (the ranking heads)
    # No per-example series where the examples per batch are unknown: Keras' loss only, and why.
    train = _ds(32, 16, True, 1)
    logger = PerExampleLoss(_Towers(), train, rows_are_examples=False)
    assert logger.scale["per_example"] == "unavailable" and "no per-example loss" in logger.scale["how"]
    logs = {}
    logger.on_train_batch_end(0, {"loss": tf.constant(3.0)})
    logger.on_epoch_end(0, logs)
    assert logs == {}


def test_gradient_norms_per_top_level_layer_add_up_to_the_global_one():
    tf.keras.utils.set_random_seed(0)
    model = _Towers()
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0))
    train = _ds(32, 16, True, 1)
    grads = GradientNormLogger(model, train)
    history = model.fit(train, epochs=2, callbacks=[grads], verbose=0).history
    assert set(grads.group_norms) == {"query_tower", "candidate_tower"}
    q, c = history["grad_norm/query_tower"], history["grad_norm/candidate_tower"]
    assert len(q) == len(c) == 2 and min(q + c) > 0
    assert np.hypot(q, c) == pytest.approx(grads.norms, rel=1e-5)
    assert history["grad_norm"] == pytest.approx(grads.norms)


def test_skeleton_records_the_series_and_how(tiny_pipeline):
    """A retrieval fit through the skeleton (validation carved off train): history has the
    per-example series, one per epoch, the per-tower gradient norms and ``loss_scale``."""
    from trainer import features as F, skeleton
    from trainer.hparams import trainer_config
    from trainer.retrieval.train import RECIPE
    from trainer.splits import SplitConfig

    examples, transform, side, hist = tiny_pipeline
    config = trainer_config({"retrieval": {"batch_size": 64}})
    data = skeleton.load_data(examples, transform, side, hist, RECIPE.raw_keys(side), 0,
                              SplitConfig("global_time", 0.2), config.selection)
    result = skeleton.fit_and_evaluate(RECIPE, data, config.retrieval, config.selection, epochs=2, evaluate=False,
                                       verbose=0)
    h = result.history
    assert len(h["loss_per_example"]) == len(h["val_loss_per_example"]) == len(h["val_recall@100"]) == 2
    assert all(np.isfinite(h["loss_per_example"] + h["val_loss_per_example"]))
    s = h["loss_scale"]
    assert s["reduction"] == SUM and s["train_batch_rows"] == 64 and s["per_example"] == "exact"
    assert s["validation_rows"] == len(data.validation.raw[F.USER_ID])
    assert {"grad_norm/query_tower", "grad_norm/candidate_tower"} <= set(h)
