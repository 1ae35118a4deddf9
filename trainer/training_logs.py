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
    ``compute_loss`` reduces it on the whole probe batch in one replica: under a sum over the
    batch's rows (``loss_reduction``) they grow with the probe batch's rows. The probe is one
    tf.function, traced once per callback (a strategy's ``run`` called eagerly every epoch is
    slow and warns of its "significant overhead").
    """

    def __init__(self, model: tf.keras.Model, dataset: tf.data.Dataset):
        super().__init__()
        self._model = model
        self._probe = next(iter(dataset))
        self._probe_fn = None
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
        if self._probe_fn is None:  # traced at the first epoch's end, when every variable exists
            self._probe_fn = self._make_probe_fn()
        return self._probe_fn()

    def _make_probe_fn(self):
        model, batch = self._model, self._probe
        # In a replica context: a distributed variable (MirroredStrategy, MultiWorkerMirroredStrategy)
        # has no handle to differentiate outside one. Each replica gets the whole probe batch and no
        # gradient is reduced across them: this process's first replica's is kept. A loss averaged
        # over the global batch (``loss_over_global_batch``) then divides by the rows of every
        # replica's copy, R x the probe's: times R, it is the whole probe batch's mean in one replica,
        # the same as without a strategy.
        strategy = model.distribute_strategy
        scale = float(strategy.num_replicas_in_sync) if loss_over_global_batch(model) else 1.0

        def probe():
            with tf.GradientTape() as tape:
                loss = model.compute_loss(batch, training=True)
                loss = loss * scale if scale != 1.0 else loss
                loss = loss + sum(model.losses) if model.losses else loss
            return tape.gradient(loss, model.trainable_variables)

        @tf.function
        def gradients():
            return tf.nest.map_structure(lambda g: strategy.experimental_local_results(g)[0], strategy.run(probe))

        return gradients

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


def loss_over_global_batch(model: tf.keras.Model) -> bool:
    """Whether ``model.compute_loss`` is a mean over the *global* batch's rows (its
    ``loss_over_global_batch``, the ranking model): under R replicas each one divides its rows'
    summed loss by the rows of all R, so the replicas' losses (and gradients) add up to the
    global batch's mean, rather than each being a mean over its own rows; and the loss the
    model logs for a step (Keras' ``loss``) is that global mean."""
    return bool(getattr(model, "loss_over_global_batch", False))


def loss_reduction(model: tf.keras.Model, rows_are_examples: bool = True) -> str:
    """How ``model.compute_loss`` reduces a batch: ``SUM`` over its rows (``tfrs.tasks.Retrieval``'s
    default loss, the in-batch softmax) or ``MEAN`` over them (the catalogue softmax; the ranking
    heads, a mean over the global batch: ``loss_over_global_batch``); when a batch's rows are not
    its examples (``rows_are_examples`` False: the sequence objective's windows of events, each
    with several target positions whose count varies from batch to batch), ``SUM_OVER_TARGETS``
    (its in-batch fallback) or ``MEAN_OVER_TARGETS`` (its full softmax)."""
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
    global batch's rows; a mean over each replica's own rows is divided by R (exact when the
    replicas get equal rows); a model whose loss is a mean over the global batch's rows
    (``loss_over_global_batch``: the ranking model) logs that mean, exact however the rows split.
    No series under ``SUM_OVER_TARGETS`` (the targets per batch are not known here).
    """

    def __init__(self, model: tf.keras.Model, train_ds: tf.data.Dataset, eval_ds: tf.data.Dataset | None = None,
                 replicas: int = 1, rows_are_examples: bool = True):
        super().__init__()
        self._supports_tf_logs = True  # keep the batch losses as tensors: no host sync per step
        self.reduction = loss_reduction(model, rows_are_examples)
        self.replicas = max(1, int(replicas))
        # A mean over the global batch (``loss_over_global_batch``): the replicas' summed losses are it.
        self.global_batch = self.reduction == MEAN and loss_over_global_batch(model)
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
        elif self.replicas > 1 and self.global_batch:
            how = (f"the loss is a mean over the global batch's rows: each of the {self.replicas} replicas divides its "
                   f"rows' summed loss by the rows of all of them, and a step logs their sum")
            s["per_example"] = "exact"
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
        return float((losses * rows).sum() / rows.sum() / (1 if self.global_batch else self.replicas))

    def on_epoch_end(self, epoch, logs=None):
        if self.reduction == SUM_OVER_TARGETS or logs is None:
            return
        if self._train:
            losses = self._floats(self._train)
            logs["loss_per_example"] = self.per_example(losses, [self.scale["train_batch_rows"] or 1] * len(losses))
        if self._val and self._val_rows and len(self._val) == len(self._val_rows):
            logs["val_loss_per_example"] = self.per_example(self._floats(self._val), self._val_rows)
        self._train, self._val = [], []
