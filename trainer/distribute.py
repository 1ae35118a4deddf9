"""Device placement and numeric precision.

MirroredStrategy across visible GPUs, the default strategy on CPU. The Keras dtype
policy (mixed precision) is chosen per model from its hyper-parameters and applied only
while that model is built (``precision_scope``): Keras layers capture the global policy
when they are constructed, so scoping the build is enough, and a second trainer in the
same process (the ranking model after retrieval) never inherits the first one's policy.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from trainer.training_logs import log


def choose_strategy() -> tuple[tf.distribute.Strategy, int]:
    """Returns (strategy, replicas)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        strategy = tf.distribute.MirroredStrategy()
        log(f"{len(gpus)} GPU(s): MirroredStrategy with {strategy.num_replicas_in_sync} replica(s)")
        return strategy, strategy.num_replicas_in_sync
    log("no GPU visible: training on CPU (default strategy)")
    return tf.distribute.get_strategy(), 1


def policy_name(hp) -> str:
    """The Keras dtype policy of a model: ``hp.precision`` when it is not float32; else
    ``mixed_float16`` when ``hp.mixed_precision`` is on and a GPU is present; else float32."""
    if hp.precision != "float32":
        return hp.precision
    if hp.mixed_precision and tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


@contextlib.contextmanager
def policy_scope(name: str):
    """Sets the global Keras dtype policy for the layers built inside; restores the previous one."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def precision_scope(hp, kind: str = ""):
    """Builds (and compiles) a model under its dtype policy (``policy_name``). Under
    ``mixed_float16`` Keras' ``compile`` wraps the optimizer in a LossScaleOptimizer itself."""
    name = policy_name(hp)
    if name != "float32":
        log(f"{kind}: dtype policy {name}")
    with policy_scope(name):
        yield name
