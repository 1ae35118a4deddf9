"""What both trainers set up the same way: Transform output, feature layout, device
strategy, the train/eval row datasets, and the fit callbacks."""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_transform as tft

from trainer import features as F, raw_data
from trainer.distribute import choose_strategy
from trainer.model_inputs import FeatureLayout, layout_from_transform
from trainer.training_logs import GradientNormLogger


@dataclasses.dataclass
class TrainingContext:
    tft_layer: tf.keras.layers.Layer
    layout: FeatureLayout
    raw_spec: dict  # raw feature spec (parse tf.Examples)
    user_features: dict  # canonical key -> kind
    item_features: dict
    strategy: tf.distribute.Strategy
    replicas: int
    train_rows: tf.data.Dataset  # unbatched, transformed, cached
    eval_rows: tf.data.Dataset


def prepare(examples_uri: str, transform_dir: str, side_features: dict, seed: int,
            mixed_precision: bool) -> TrainingContext:
    tf.keras.utils.set_random_seed(seed)
    tft_out = tft.TFTransformOutput(transform_dir)
    tft_layer = tft_out.transform_features_layer()
    layout = layout_from_transform(tft_out, side_features)
    spec = tft_out.raw_feature_spec()
    strategy, replicas = choose_strategy(mixed_precision)
    rows = {split: raw_data.transformed_rows(raw_data.split_files(examples_uri, split), spec, tft_layer, layout)
            for split in ("train", "eval")}
    return TrainingContext(
        tft_layer=tft_layer, layout=layout, raw_spec=spec,
        user_features={k: v for k, v in side_features.items() if k.startswith(F.USER_FEATURE_PREFIX)},
        item_features={k: v for k, v in side_features.items() if k.startswith(F.ITEM_FEATURE_PREFIX)},
        strategy=strategy, replicas=replicas, train_rows=rows["train"], eval_rows=rows["eval"])


def fit_callbacks(model, train_ds, patience: int, log_dir: str | None):
    """Early stopping on the eval split (best weights restored), gradient norms, TensorBoard."""
    early_stopping = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                      restore_best_weights=True)
    grad_logger = GradientNormLogger(model, train_ds)
    callbacks = [early_stopping, grad_logger]
    if log_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    return callbacks, early_stopping, grad_logger
