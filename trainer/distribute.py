"""Device placement: MirroredStrategy across visible GPUs, the default strategy on CPU."""

from __future__ import annotations

import tensorflow as tf

from trainer.training_logs import log


def choose_strategy(mixed_precision: bool = False) -> tuple[tf.distribute.Strategy, int]:
    """Returns (strategy, replicas). Mixed precision is applied only when a GPU is present."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        strategy = tf.distribute.MirroredStrategy()
        if mixed_precision:
            tf.keras.mixed_precision.set_global_policy("mixed_float16")
        log(f"{len(gpus)} GPU(s): MirroredStrategy with {strategy.num_replicas_in_sync} replica(s), "
            f"mixed precision {'on' if mixed_precision else 'off'}")
        return strategy, strategy.num_replicas_in_sync
    log("no GPU visible: training on CPU (default strategy)")
    return tf.distribute.get_strategy(), 1
