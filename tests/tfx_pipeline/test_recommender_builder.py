"""RecommenderBuilder (tfx_pipeline/components/recommender_builder.py) on real TFX artifacts.

Blessed (int ``blessed`` = 1, what TFX's Pusher and our InfraValidator check) only when both
gates blessed their model; then both one-call SavedModels are written where the Pusher
copies from (``Format-Serving/``). Otherwise nothing is built. The parts are the hand-built
models of tests/support/client_models.py (stock ops; ScaNN's export is stood in by the
brute-force one, which the composition treats the same).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from tfx.types import standard_artifacts

import serving  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from serving import names
from trainer.artifacts import serving_dir


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict:
    from tests.support.client_models import save_models

    root = tmp_path_factory.mktemp("parts")
    save_models(str(root))
    return {"retrieval": str(root / names.RETRIEVAL_MODEL / "1"), "ranking": str(root / names.RANKING_MODEL / "1")}


def _model(tmp_path, name: str, saved_model: str | None = None):
    artifact = standard_artifacts.Model()
    artifact.uri = str(tmp_path / name)
    os.makedirs(artifact.uri, exist_ok=True)
    if saved_model:
        shutil.copytree(saved_model, serving_dir(artifact.uri))
    return artifact


def _blessing(tmp_path, name: str, blessed: int | None):
    artifact = standard_artifacts.ModelBlessing()
    artifact.uri = str(tmp_path / name)
    os.makedirs(artifact.uri, exist_ok=True)
    if blessed is not None:
        artifact.set_int_custom_property("blessed", blessed)
    return artifact


def _run(tmp_path, parts, retrieval_blessed, ranking_blessed):
    from tfx_pipeline.components.recommender_builder import RecommenderBuilder

    out = {"recommender": _model(tmp_path, "recommender"),
           "recommender_brute_force": _model(tmp_path, "recommender_brute_force"),
           "blessing": _blessing(tmp_path, "blessing", None)}
    RecommenderBuilder.EXECUTOR_SPEC.executor_class._FUNCTION(
        scann_model=_model(tmp_path, "scann", parts["retrieval"]),
        brute_force_model=_model(tmp_path, "brute_force", parts["retrieval"]),
        ranking_model=_model(tmp_path, "ranking", parts["ranking"]),
        retrieval_blessing=_blessing(tmp_path, "retrieval_blessing", retrieval_blessed),
        ranking_blessing=_blessing(tmp_path, "ranking_blessing", ranking_blessed),
        num_candidates=7, **out)
    return out


@pytest.mark.parametrize("retrieval_blessed,ranking_blessed", [(1, 0), (0, 1), (0, 0), (1, None)])
def test_nothing_is_built_unless_both_parts_are_blessed(tmp_path, parts, retrieval_blessed, ranking_blessed, capsys):
    out = _run(tmp_path, parts, retrieval_blessed, ranking_blessed)
    assert out["blessing"].get_int_custom_property("blessed") == 0
    assert os.path.exists(os.path.join(out["blessing"].uri, "NOT_BLESSED"))
    assert not os.path.exists(os.path.join(out["blessing"].uri, "BLESSED"))
    for name in ("recommender", "recommender_brute_force"):
        assert not os.path.exists(serving_dir(out[name].uri))
    assert "not built" in capsys.readouterr().out


def test_both_blessed_builds_both_one_call_models(tmp_path, parts):
    import tensorflow as tf

    out = _run(tmp_path, parts, 1, 1)
    assert out["blessing"].get_int_custom_property("blessed") == 1
    with open(os.path.join(out["blessing"].uri, "BLESSED")) as fh:
        assert json.load(fh)["blessed"] is True
    for name in ("recommender", "recommender_brute_force"):
        model = tf.saved_model.load(serving_dir(out[name].uri))
        assert names.RECOMMEND_SIGNATURE in model.signatures, name
        spec = model.signatures[names.RECOMMEND_SIGNATURE].structured_input_signature[1]
        assert names.NUM_CANDIDATES in spec and names.EXCLUDE_ITEM_IDS in spec
