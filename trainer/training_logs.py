"""Progress output and training diagnostics shared by the trainers."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def log(msg: str) -> None:
    print(f"[trainer] {msg}", flush=True)


class GradientNormLogger(tf.keras.callbacks.Callback):
    """Global gradient norm on a fixed probe batch after every epoch.

    Measured on the probe batch rather than hooked into train_step, so training
    itself pays nothing; a norm that collapses toward 0 or explodes across epochs
    shows vanishing or exploding gradients in the report.
    """

    def __init__(self, model: tf.keras.Model, dataset: tf.data.Dataset):
        super().__init__()
        self._model = model
        self._probe = next(iter(dataset))
        self.norms: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        with tf.GradientTape() as tape:
            loss = self._model.compute_loss(self._probe, training=True)
            loss = loss + sum(self._model.losses) if self._model.losses else loss
        grads = tape.gradient(loss, self._model.trainable_variables)
        norm = float(tf.linalg.global_norm([g if not isinstance(g, tf.IndexedSlices) else tf.convert_to_tensor(g)
                                            for g in grads if g is not None]).numpy())
        self.norms.append(norm if np.isfinite(norm) else float("nan"))
        if logs is not None:
            logs["grad_norm"] = self.norms[-1]
