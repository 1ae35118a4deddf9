"""Mixed precision: both trainers train and export under ``precision: mixed_bfloat16`` on CPU
(the same code path as ``mixed_float16`` on a GPU, without loss scaling), the policy is scoped
to the model that asked for it, and the exported signatures stay float32."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.hparams import trainer_config
from trainer.typed_config import ConfigError


def _layers(model):
    stack = [model]
    while stack:
        layer = stack.pop()
        yield layer
        stack.extend(getattr(layer, "_self_tracked_trackables", []))


def test_both_trainers_train_and_export_under_mixed_bfloat16(tiny_pipeline, tmp_path):
    from trainer import skeleton
    from trainer.ranking.train import RECIPE as RANKING
    from trainer.retrieval.train import RECIPE as RETRIEVAL, train_and_export
    from trainer.splits import SplitConfig

    examples, transform, side, hist = tiny_pipeline
    mixed = trainer_config({"retrieval": {"epochs": 1, "batch_size": 64, "precision": "mixed_bfloat16"},
                            "ranking": {"epochs": 1, "batch_size": 64, "precision": "mixed_bfloat16"},
                            "selection": {"validation": False}})
    # Each model's layers compute in bfloat16, its loss is finite, and the policy does not
    # leak out of the build into the next model of the process.
    for recipe in (RETRIEVAL, RANKING):
        data = skeleton.load_data(examples, transform, side, hist, recipe.raw_keys(side), 0,
                                  SplitConfig("global_time", 0.2), mixed.selection)
        result = skeleton.fit_and_evaluate(recipe, data, getattr(mixed, recipe.kind), mixed.selection,
                                           evaluate=False, verbose=0)
        dtypes = {layer.compute_dtype for layer in _layers(result.model) if isinstance(layer, tf.keras.layers.Dense)}
        assert "bfloat16" in dtypes, (recipe.kind, dtypes)
        assert np.isfinite(result.history["loss"]).all(), result.history
        assert tf.keras.mixed_precision.global_policy().name == "float32"
        assert tf.keras.layers.Dense(1).compute_dtype == "float32"

    # Retrieval's whole run (fit with the logQ-corrected loss, evaluation, export): float32 out.
    metrics = train_and_export(examples, transform, str(tmp_path / "m" / "Format-Serving"), str(tmp_path / "run"),
                               side, hist, mixed)
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    assert 0.0 < metrics["model"]["recall@100"] <= 1.0
    loaded = tf.saved_model.load(str(tmp_path / "m" / "Format-Serving"))
    assert loaded.signatures["recommend"].structured_outputs["scores"].dtype == tf.float32
    assert loaded.signatures["query_embedding"].structured_outputs["embedding"].dtype == tf.float32


def test_precision_is_checked():
    with pytest.raises(ConfigError, match="precision"):
        trainer_config({"retrieval": {"precision": "float16"}})
