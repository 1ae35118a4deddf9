"""The pipeline's Pusher: a version appears under the serving base whole or not at all.

The executor runs on real TFX artifacts (a trainer-shaped Model with Format-Serving/,
a blessed ModelBlessing) and pushes into the base path of a real model server
under a steady load: no failed or wrong answer, no failed load, and the version
it serves is the pushed one.
"""

from __future__ import annotations

import os
import shutil
import time

import grpc
import pytest
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

import serving  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from serving.model_server import ModelServer
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2
from tests.support.model_servers import install_version
from tests.support.steady_load import SteadyLoad
from tests.support.vocab_models import check_response, expected, request, save_vocab_model
from tfx_pipeline.components.atomic_pusher import AtomicPushExecutor


@pytest.fixture(scope="module")
def vocab_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("vocab_models")
    return {v: save_vocab_model(str(root / f"v{v}"), v) for v in (1, 2)}


def _inputs(tmp_path, model_dir: str, blessed: int = 1):
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    shutil.copytree(model_dir, os.path.join(model.uri, "Format-Serving"))
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", blessed)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    return model, blessing, pushed


def _push(tmp_path, model_dir: str, base: str, blessed: int = 1):
    model, blessing, pushed = _inputs(tmp_path, model_dir, blessed)
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))
    AtomicPushExecutor().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                            {"push_destination": proto_utils.proto_to_json(destination)})
    return pushed


def test_push_under_load_is_served_whole(tmp_path, vocab_models):
    base = str(tmp_path / "serving" / "m")
    install_version(vocab_models[1], base, 1)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="m", base_path=base, model_platform="tensorflow")

    def pristine(response):  # the pushed copy of v2 serves under its timestamp version
        version = response.model_spec.version.value
        if version == 1:
            return check_response(response)
        ids = [b.decode() for b in response.outputs["item_ids"].string_val]
        scores = list(response.outputs["scores"].float_val)
        want = [expected(u, 2) for u in ("u3", "u40", "nobody")]
        return None if list(zip(ids, scores)) == want else f"version {version}: {ids} {scores}, want {want}"

    with ModelServer(config, rest_port=None, metrics_port=None, poll_interval_s=0.05) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with SteadyLoad(stub, lambda: request("m"), check=pristine) as load:
                pushed = _push(tmp_path, vocab_models[2], base)
                version = int(pushed.get_string_custom_property("pushed_version"))
                deadline = time.monotonic() + 30
                while load.last_version() != version and time.monotonic() < deadline:
                    time.sleep(0.02)
        assert load.last_version() == version
        assert load.failures == [] and load.wrong == []
        assert server.metrics.model_loads.labels("m", "failure")._value.get() == 0
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == os.path.join(base, str(version))
    assert sorted(os.listdir(base)) == ["1", str(version)]  # no temporary sibling left
    assert (tmp_path / "pushed" / "saved_model.pb").is_file()  # TFX's archive copy


def test_incomplete_model_is_not_pushed_and_leaves_nothing(tmp_path, vocab_models):
    broken = shutil.copytree(vocab_models[1], tmp_path / "broken")
    os.remove(broken / "assets" / "users.txt")
    base = str(tmp_path / "serving" / "m")
    with pytest.raises(RuntimeError, match=r"incomplete \(asset file\(s\) \['users.txt'\] missing"):
        _push(tmp_path, str(broken), base)
    assert os.listdir(base) == []


def test_unblessed_model_is_not_pushed(tmp_path, vocab_models):
    base = str(tmp_path / "serving" / "m")
    pushed = _push(tmp_path, vocab_models[1], base, blessed=0)
    assert pushed.get_int_custom_property("pushed") == 0
    assert not os.path.exists(base)
