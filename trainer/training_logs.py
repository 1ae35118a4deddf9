"""Progress output and training diagnostics shared by the trainers."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs


def log(msg: str) -> None:
    print(f"[trainer] {msg}", flush=True)


class GradientNormLogger(tf.keras.callbacks.Callback):
    """Gradient norms on a fixed probe batch after every epoch: the global one (``grad_norm``)
    and one per top-level layer of the model (``grad_norm/<layer name>``, e.g. the query and
    candidate towers; a variable shared by several layers counts in the first one's).

    Measured on the probe batch rather than hooked into train_step, so training
    itself pays nothing; a norm that collapses toward 0 or explodes across epochs
    shows vanishing or exploding gradients in the report. The norms are of the loss as
    ``compute_loss`` reduces it: under a sum over the batch's rows (``loss_reduction``) they
    grow with the probe batch's rows.
    """

    def __init__(self, model: tf.keras.Model, dataset: tf.data.Dataset):
        super().__init__()
        self._model = model
        self._probe = next(iter(dataset))
        self.norms: list[float] = []
        self.group_norms: dict[str, list[float]] = {}

    def _groups(self) -> list[str]:
        """The group of each trainable variable: the first top-level layer holding it, else "other"."""
        owner = {}
        for layer in self._model.layers:
            for v in layer.trainable_variables:
                owner.setdefault(id(v), layer.name)
        return [owner.get(id(v), "other") for v in self._model.trainable_variables]

    def _gradients(self) -> list:
        def probe():
            with tf.GradientTape() as tape:
                loss = self._model.compute_loss(self._probe, training=True)
                loss = loss + sum(self._model.losses) if self._model.losses else loss
            return tape.gradient(loss, self._model.trainable_variables)

        # In a replica context: a distributed variable (MirroredStrategy, MultiWorkerMirroredStrategy)
        # has no handle to differentiate outside one. Each replica gets the whole probe batch and no
        # gradient is reduced across them (no collective op): this process's first replica's is kept.
        strategy = self._model.distribute_strategy
        return tf.nest.map_structure(lambda g: strategy.experimental_local_results(g)[0], strategy.run(probe))

    def on_epoch_end(self, epoch, logs=None):
        grads = self._gradients()
        squares: dict[str, float] = {}
        for group, g in zip(self._groups(), grads):
            if g is not None:
                g = tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                squares[group] = squares.get(group, 0.0) + float(tf.reduce_sum(tf.square(tf.cast(g, tf.float64))))
        finite = lambda x: x if np.isfinite(x) else float("nan")  # noqa: E731
        self.norms.append(finite(float(np.sqrt(sum(squares.values())))))
        for group, square in squares.items():
            series = self.group_norms.setdefault(group, [float("nan")] * (len(self.norms) - 1))
            series.append(finite(float(np.sqrt(square))))
        if logs is not None:
            logs["grad_norm"] = self.norms[-1]
            logs.update({f"grad_norm/{group}": series[-1] for group, series in self.group_norms.items()})


SUM, MEAN, SUM_OVER_TARGETS, MEAN_OVER_TARGETS = "sum", "mean", "sum_over_targets", "mean_over_targets"


def loss_reduction(model: tf.keras.Model, rows_are_examples: bool = True) -> str:
    """How ``model.compute_loss`` reduces a batch: ``SUM`` over its rows (``tfrs.tasks.Retrieval``'s
    default loss, the in-batch softmax) or ``MEAN`` over them (the catalogue softmax; Keras losses'
    default: the ranking heads); when a batch's rows are not its examples (``rows_are_examples``
    False: the sequence objective's windows of events, each with several target positions whose
    count varies from batch to batch), ``SUM_OVER_TARGETS`` (its in-batch fallback) or
    ``MEAN_OVER_TARGETS`` (its full softmax)."""
    task = getattr(model, "task", None)
    summed = (isinstance(task, tfrs.tasks.Retrieval) and not getattr(model, "full_softmax", False)
              and getattr(getattr(task, "_loss", None), "reduction", None) == tf.keras.losses.Reduction.SUM)
    if not rows_are_examples:
        return SUM_OVER_TARGETS if summed else MEAN_OVER_TARGETS
    return SUM if summed else MEAN


def _rows(batch) -> int:
    return int(tf.shape(tf.nest.flatten(batch)[0])[0])


class PerExampleLoss(tf.keras.callbacks.Callback):
    """Adds ``loss_per_example`` and ``val_loss_per_example`` to each epoch's logs, and describes
    how in ``scale`` (history.json's ``loss_scale``).

    For these models (tfrs) Keras' own ``loss`` and ``val_loss`` are the LAST batch's loss of the
    epoch and of the validation pass, not a mean over the batches (tfrs' train and test steps
    return the batch's loss, which no Keras metric accumulates), and the in-batch softmax loss is
    a sum over the batch's rows: the training batch and the last, partial, validation batch give
    figures on different scales. Here every batch's loss is kept and, per epoch:

    - train: the mean over the epoch's batches of the loss per row (training batches drop the
      remainder, so all have the same rows; weights move during the epoch, training mode);
    - validation (after the epoch, inference mode): the loss summed over the rows divided by the
      rows. Under a sum loss each row's softmax is over its own batch's candidates, so the last
      batch when partial (fewer candidates, a lower loss) is left out when a full batch exists;
      under a mean loss every row counts (each batch's mean weighted by its rows).

    With R replicas Keras sums the replicas' values: a sum loss is then still the sum over the
    global batch's rows; a mean loss is divided by R (exact when the replicas get equal rows).
    No series under ``SUM_OVER_TARGETS`` (the targets per batch are not known here).
    """

    def __init__(self, model: tf.keras.Model, train_ds: tf.data.Dataset, eval_ds: tf.data.Dataset | None = None,
                 replicas: int = 1, rows_are_examples: bool = True):
        super().__init__()
        self._supports_tf_logs = True  # keep the batch losses as tensors: no host sync per step
        self.reduction = loss_reduction(model, rows_are_examples)
        self.replicas = max(1, int(replicas))
        self._eval_ds = eval_ds
        self._val_rows: list[int] | None = None
        self._train: list = []
        self._val: list = []
        static = tf.nest.flatten(train_ds.element_spec)[0].shape
        self.scale: dict = {"reduction": self.reduction, "replicas": self.replicas,
                            "train_batch_rows": static[0] if static.rank else None,
                            "train_extra_negatives": int(getattr(model, "uniform_negatives", 0) or 0)}
        if self.reduction == SUM and self.scale["train_batch_rows"] is None:
            self.scale["train_batch_rows"] = _rows(next(iter(train_ds)))
        self._describe()

    def _describe(self) -> None:
        s = self.scale
        if self.reduction == SUM_OVER_TARGETS:
            s.update(per_example="unavailable", how=(
                "the loss is a sum over each batch's target positions, whose count varies from batch to batch: no "
                "per-example loss; loss and val_loss are Keras' (the last batch's)"))
            return
        train_rows, extra = s["train_batch_rows"], s["train_extra_negatives"]
        if self.reduction == SUM:
            how = (f"the in-batch softmax loss is a sum over a batch's rows, each row's softmax over its batch's "
                   f"candidates: divided by the rows (training batches of {train_rows} rows"
                   + (f", plus {extra} uniform negatives as candidates" if extra else "") + ")")
            s["per_example"] = "exact"
        elif self.reduction == MEAN_OVER_TARGETS:
            how = ("the loss is a mean over a batch's target positions: the epoch's figure is the mean over its "
                   "batches, which hold different numbers of targets")
            s["per_example"] = "approximate"
        else:
            how = "the loss is a mean over a batch's rows" + (f", summed by Keras over {self.replicas} replicas "
                                                             f"and divided by {self.replicas}"
                                                             if self.replicas > 1 else "")
            s["per_example"] = "exact" if self.replicas == 1 else "approximate"
        rows = self._val_rows
        if rows:
            full = max(rows)
            used = [n for n in rows if n == full] if self.reduction == SUM else rows
            s.update(validation_rows=sum(rows), validation_batches=len(rows), validation_batch_rows=full,
                     validation_last_batch_rows=rows[-1], validation_rows_used=sum(used))
            if self.reduction == SUM and sum(used) < sum(rows):
                how += (f"; validation over its {len(used)} full batch(es) of {full} rows ({sum(used)} of "
                        f"{sum(rows)} rows): the last batch, of {rows[-1]} rows, scores its rows against fewer "
                        f"candidates and is left out")
            elif rows[-1] < full:
                how += f"; validation over all {sum(rows)} rows, the last batch ({rows[-1]} rows) weighted by its rows"
            else:
                how += f"; validation over all {sum(rows)} rows"
            if self.reduction == SUM and train_rows and full != train_rows + extra:
                how += (f"; a validation row's softmax is over {full} candidates, a training row's over "
                        f"{train_rows + extra}: the two differ in difficulty, not only in fit (compare their trends, "
                        "not their levels)")
        s["how"] = how

    def on_epoch_begin(self, epoch, logs=None):
        self._train = []

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            self._train.append(logs["loss"])

    def on_test_begin(self, logs=None):
        self._val = []
        if self._val_rows is None and self._eval_ds is not None:
            self._val_rows = [int(n) for n in self._eval_ds.map(lambda b: tf.shape(tf.nest.flatten(b)[0])[0])]
            self._describe()

    def on_test_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            self._val.append(logs["loss"])

    @staticmethod
    def _floats(values: list) -> np.ndarray:
        return tf.cast(tf.stack([tf.reshape(tf.convert_to_tensor(v), []) for v in values]), tf.float64).numpy()

    def per_example(self, losses: np.ndarray, rows: list[int]) -> float:
        """The loss per row over batches of ``rows`` rows whose (Keras-logged) losses are ``losses``."""
        rows = np.asarray(rows, np.float64)
        if self.reduction == SUM:
            full = rows == rows.max()
            return float(losses[full].sum() / rows[full].sum())
        return float((losses * rows).sum() / rows.sum() / self.replicas)

    def on_epoch_end(self, epoch, logs=None):
        if self.reduction == SUM_OVER_TARGETS or logs is None:
            return
        if self._train:
            losses = self._floats(self._train)
            logs["loss_per_example"] = self.per_example(losses, [self.scale["train_batch_rows"] or 1] * len(losses))
        if self._val and self._val_rows and len(self._val) == len(self._val_rows):
            logs["val_loss_per_example"] = self.per_example(self._floats(self._val), self._val_rows)
        self._train, self._val = [], []
