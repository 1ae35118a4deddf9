"""Request limits and finite-float checks, against a real server on 127.0.0.1 (gRPC and REST)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import names
from serving.model_server import ModelServer
from serving.model_server.limits import RequestLimits
from tests.support.model_servers import make_base, recommend_request, score_request
from tests.support.request_surface import (
    USER_AGE, features_request, http, make_model_dir, save_features_model)

MAX_ROWS, MAX_ELEMENTS, MAX_RESPONSE = 8, 20, 4096


@pytest.fixture(scope="module")
def env(tmp_path_factory, templates):
    tmp = tmp_path_factory.mktemp("limits")
    rec = make_base(tmp, templates, "rec", [1])
    feats = make_model_dir(str(tmp), "feats", save_features_model(str(tmp / "features_model")))
    config = tmp / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "rec" base_path: "{rec}" model_platform: "tensorflow" }} '
        f'config {{ name: "feats" base_path: "{feats}" model_platform: "tensorflow" }} }}')
    server = ModelServer(str(config), rest_port=0, metrics_port=None,
                         limits=RequestLimits(MAX_ROWS, MAX_ELEMENTS, MAX_RESPONSE))
    server.start()
    server.wait_until_available(60)
    channel = grpc.insecure_channel(server.grpc_address)
    yield {"server": server, "stub": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "url": server.rest_url}
    channel.close()
    server.stop()


def _error(env, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        env["stub"].Predict(request, timeout=20)
    return info.value


def test_within_limits_is_served(env):
    response = env["stub"].Predict(recommend_request("rec", ["u"] * MAX_ROWS, [1] * MAX_ROWS), timeout=10)
    assert tf.make_ndarray(response.outputs[names.OUT_SCORES]).shape == (MAX_ROWS, 1)


def test_too_many_rows_grpc_names_the_limit_and_flag(env):
    e = _error(env, recommend_request("rec", ["u"] * (MAX_ROWS + 1), [1] * (MAX_ROWS + 1)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{MAX_ROWS + 1} rows" in e.details() and "--max_request_rows" in e.details()


def test_rows_checked_from_the_declared_shape_before_decoding(env):
    # A 10**11-row shape with one value: decoding it (TF's fill rule) would need 800 GB.
    request = recommend_request("rec")
    for key in (names.USER_ID, names.K):
        request.inputs[key].tensor_shape.dim[0].size = 10 ** 11
    start = time.monotonic()
    e = _error(env, request)
    assert time.monotonic() - start < 2
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "100000000000 rows" in e.details()


def test_too_many_elements(env):
    # score: x [8, 2] + user_id [8] = 24 elements > 20, 8 rows (within the row limit).
    e = _error(env, score_request("rec", np.ones((8, 2)), ["u"] * 8))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "24 elements" in e.details() and "--max_request_elements" in e.details()


def test_response_size_estimated_from_k_before_the_model_runs(env):
    # 1 row x k=2**28 columns: the model would allocate 2**28 strings and floats.
    start = time.monotonic()
    e = _error(env, recommend_request("rec", ["u"], [2 ** 28]))
    assert time.monotonic() - start < 2
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "would hold at least" in e.details() and "--max_response_size_mb" in e.details()


def test_actual_response_size_checked_before_encoding(env):
    # score echoes user_id: 2 rows of 3000-byte ids pass every estimate, the real output does not.
    e = _error(env, score_request("rec", np.ones((2, 2)), ["x" * 3000] * 2))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "holds" in e.details() and "--max_response_size_mb" in e.details()


def test_rest_limits(env):
    url = f"{env['url']}/v1/models/rec:predict"
    rows = [{"user_id": "u", "k": 1}] * (MAX_ROWS + 1)
    status, body = http(url, {"signature_name": names.RECOMMEND_SIGNATURE, "instances": rows})
    assert status == 400 and "--max_request_rows" in body["error"]
    status, body = http(url, {"signature_name": names.RECOMMEND_SIGNATURE,
                              "inputs": {"user_id": ["u"], "k": [2 ** 28]}})
    assert status == 429 and "--max_response_size_mb" in body["error"]


@pytest.mark.parametrize("value, word", [(float("inf"), "inf"), (float("-inf"), "inf"), (float("nan"), "NaN")])
def test_non_finite_float_rejected_naming_the_input(env, value, word):
    e = _error(env, features_request("feats", [30.0, 40.0], [1.0, value]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert names.HOURS_SINCE_PREV_EVENT in e.details() and word in e.details() and "[1]" in e.details()
    e = _error(env, score_request("rec", [[1.0, value]], ["u"]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "'x'" in e.details()


def test_nan_is_unknown_for_user_features_but_inf_is_not(env):
    response = env["stub"].Predict(features_request("feats", [float("nan"), 30.0], [1.0, 2.0]), timeout=10)
    assert tf.make_ndarray(response.outputs["known_age"]).tolist() == [False, True]
    e = _error(env, features_request("feats", [float("inf")], [1.0]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and USER_AGE in e.details()


def test_rest_non_finite_json_tokens_rejected(env):
    # Python's json (and so a careless client) writes Infinity/NaN tokens.
    status, body = http(f"{env['url']}/v1/models/feats:predict",
                        '{"instances": [{"user_age": 1, "hours_since_prev_event": Infinity}]}')
    assert status == 400 and names.HOURS_SINCE_PREV_EVENT in body["error"]


def test_documented_ranges(env):
    # hours_since_prev_event: >= 0 or -1 (unknown); k: >= 0.
    assert env["stub"].Predict(features_request("feats", [1.0, 2.0], [-1.0, 0.5]), timeout=10)
    e = _error(env, features_request("feats", [1.0, 2.0], [0.5, -5.0]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert names.HOURS_SINCE_PREV_EVENT in e.details() and "-5.0" in e.details() and "[1]" in e.details()
    e = _error(env, recommend_request("rec", ["u"], [-3]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "'k'" in e.details() and ">= 0" in e.details()
