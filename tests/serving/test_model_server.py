"""The model server against TF Serving's API, over real gRPC and HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.support.model_servers import (SCORE_SIGNATURE, install_version, make_base, recommend_request, score_request,
                                         wait_for)
from serving import names
from serving.model_server import BatchingOptions, ModelServer, parse_model_server_config

State = get_model_status_pb2.ModelVersionStatus.State
POLL_S = 0.2


def _config_text(entries: list[str]) -> str:
    return "model_config_list {\n" + "\n".join(f"  config {{ {e} }}" for e in entries) + "\n}\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory, templates):
    """One server with models covering every version policy."""
    tmp = tmp_path_factory.mktemp("server")
    bases = {
        "rec": make_base(tmp, templates, "rec", [1]),
        "multi": make_base(tmp, templates, "multi", [1, 2, 3]),
        "latest2": make_base(tmp, templates, "latest2", [1, 2, 3]),
        "swap": make_base(tmp, templates, "swap", [1]),
        "warm": make_base(tmp, templates, "warm", [1]),
    }
    text = _config_text([
        f'name: "rec" base_path: "{bases["rec"]}" model_platform: "tensorflow"',
        f'name: "multi" base_path: "{bases["multi"]}" model_platform: "tensorflow" '
        'model_version_policy { specific { versions: 1 versions: 3 } } '
        'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 }',
        f'name: "latest2" base_path: "{bases["latest2"]}" model_version_policy {{ latest {{ num_versions: 2 }} }}',
        f'name: "swap" base_path: "{bases["swap"]}" model_version_policy {{ latest {{ num_versions: 1 }} }}',
        f'name: "warm" base_path: "{bases["warm"]}"',
    ])
    config_path = tmp / "models.config"
    config_path.write_text(text)
    server = ModelServer(str(config_path), poll_interval_s=POLL_S, max_request_batch_size=64)
    server.start()
    server.wait_until_available(60)
    channel = grpc.insecure_channel(server.grpc_address)
    yield {
        "server": server,
        "bases": bases,
        "config_text": text,
        "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
        "models": model_service_pb2_grpc.ModelServiceStub(channel),
    }
    channel.close()
    server.stop()


def _status(env, name, **spec):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    return {s.version: s for s in env["models"].GetModelStatus(request, timeout=10).model_version_status}


def _rpc_error(call, request, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=kw.get("timeout", 10))
    return info.value


def _http(url: str, body: dict | bytes | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())




# -- Predict -------------------------------------------------------------------


def test_predict_returns_outputs_and_served_version(env):
    response = env["predict"].Predict(recommend_request("rec", ["a", "b"], [1, 2]), timeout=10)
    assert response.model_spec.name == "rec"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == names.RECOMMEND_SIGNATURE
    ids = tf.make_ndarray(response.outputs[names.OUT_ITEM_IDS])
    assert ids.tolist() == [[b"a/0", b""], [b"b/0", b"b/1"]]
    # Field encoding like TF Serving (clients read float_val directly).
    assert list(response.outputs[names.OUT_SCORES].float_val) == [100.0, float("-inf"), 100.0, 101.0]


def test_flat_signature_call_matches_the_keyword_call(templates):
    """Signature.__call__ uses the function's flat entry point with the inputs in sorted-key
    order; `score` declares (x, user_id), so a wrong order would feed x to user_id."""
    from serving.model_server.signatures import Signature

    fn = tf.saved_model.load(templates[1]).signatures[SCORE_SIGNATURE]
    assert hasattr(fn, "_call_flat"), "TF moved the flat entry point: Signature.__call__ falls back (slower)"
    signature = Signature.from_concrete_function(SCORE_SIGNATURE, fn)
    tensors = {"x": tf.constant([[1.0, 2.0], [3.0, 4.0]]), names.USER_ID: tf.constant(["a", "b"])}
    flat, keyword = signature(tensors), fn(**tensors)
    assert set(flat) == set(keyword) == {"sum", "user", "calls"}
    assert flat["sum"].numpy().tolist() == keyword["sum"].numpy().tolist() == [103.0, 107.0]
    assert flat["user"].numpy().tolist() == [b"a", b"b"]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):  # declaration order is wrong
        fn._call_flat([tensors["x"], tensors[names.USER_ID]], fn.captured_inputs)


def test_predict_default_signature_and_output_filter(env):
    request = recommend_request("rec", signature="")
    request.output_filter.append(names.OUT_SCORES)
    response = env["predict"].Predict(request, timeout=10)
    assert response.model_spec.signature_name == names.DEFAULT_SIGNATURE
    assert set(response.outputs) == {names.OUT_SCORES}


def test_warmup_requests_ran_before_the_first_request(env):
    # The "warm" model's warmup file holds one score request; the variable counts calls.
    response = env["predict"].Predict(score_request("warm", [[1, 2]], ["x"]), timeout=10)
    assert tf.make_ndarray(response.outputs["calls"]).tolist() == [2]


@pytest.mark.parametrize("mutate, code, fragments", [
    (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND, ["nope"]),
    (lambda r: r.model_spec.version.__setattr__("value", 99), grpc.StatusCode.NOT_FOUND, ["Specific(rec, 99)"]),
    (lambda r: setattr(r.model_spec, "version_label", "nolabel"), grpc.StatusCode.INVALID_ARGUMENT,
     ["Unrecognized servable version label: nolabel"]),
    (lambda r: setattr(r.model_spec, "signature_name", "nosig"), grpc.StatusCode.FAILED_PRECONDITION,
     ['Serving signature key "nosig" not found']),
    (lambda r: r.inputs.pop(names.K), grpc.StatusCode.INVALID_ARGUMENT, ["Missing but required: {k}"]),
    (lambda r: r.inputs["extra"].CopyFrom(tf.make_tensor_proto([1])), grpc.StatusCode.INVALID_ARGUMENT,
     ["Sent extra: {extra}"]),
    (lambda r: r.inputs[names.K].CopyFrom(tf.make_tensor_proto(np.array([1, 2], np.int64))),
     grpc.StatusCode.INVALID_ARGUMENT, ["'k'", "DT_INT32", "DT_INT64"]),
    (lambda r: r.inputs[names.USER_ID].CopyFrom(tf.make_tensor_proto(np.array([["a"], ["b"]], dtype=object))),
     grpc.StatusCode.INVALID_ARGUMENT, ["'user_id'", "[-1]", "[2, 1]"]),
    (lambda r: r.output_filter.append("nothere"), grpc.StatusCode.INVALID_ARGUMENT,
     ["output tensor alias not found in signature: nothere"]),
    (lambda r: r.inputs[names.K].CopyFrom(tf.make_tensor_proto(np.arange(65, dtype=np.int32))),
     grpc.StatusCode.INVALID_ARGUMENT, ["'user_id' has 2", "'k' has 65"]),
])
def test_predict_malformed_requests(env, mutate, code, fragments):
    request = recommend_request("rec")
    mutate(request)
    error = _rpc_error(env["predict"].Predict, request)
    assert error.code() == code, error.details()
    for fragment in fragments:
        assert fragment in error.details()


def test_predict_corrupt_tensor_proto_and_missing_dtype(env):
    request = recommend_request("rec")
    request.inputs[names.K].tensor_content = b"\x01\x02\x03"  # 3 bytes for 2 int32s
    request.inputs[names.K].ClearField("int_val")
    error = _rpc_error(env["predict"].Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'k'" in error.details()
    request = recommend_request("rec")
    request.inputs[names.K].dtype = 0
    error = _rpc_error(env["predict"].Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "received DT_INVALID" in error.details()
    # The server survived both.
    assert env["predict"].Predict(recommend_request("rec"), timeout=10).model_spec.version.value == 1


def test_predict_batch_larger_than_max_is_rejected(env):
    users = [f"u{i}" for i in range(65)]
    request = recommend_request("rec", users, [1] * 65)
    error = _rpc_error(env["predict"].Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch size 65" in error.details() and "64" in error.details()


# -- Metadata and status ---------------------------------------------------------


def test_get_model_metadata(env):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "rec"
    request.metadata_field.append("signature_def")
    response = env["predict"].GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == "rec" and response.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    recommend = sig_map.signature_def[names.RECOMMEND_SIGNATURE]
    assert set(recommend.inputs) == {names.USER_ID, names.K}
    assert recommend.inputs[names.K].dtype == tf.int32.as_datatype_enum
    assert set(recommend.outputs) == {names.OUT_ITEM_IDS, names.OUT_SCORES}
    assert SCORE_SIGNATURE in sig_map.signature_def

    request.ClearField("metadata_field")
    assert _rpc_error(env["predict"].GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    request.metadata_field.append("nope")
    assert _rpc_error(env["predict"].GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_version_policies_and_labels(env):
    # specific {1, 3}: version 2 is never loaded.
    assert {v: s.state for v, s in _status(env, "multi").items()} == {1: State.AVAILABLE, 3: State.AVAILABLE}
    predict = env["predict"].Predict
    assert predict(recommend_request("multi"), timeout=10).model_spec.version.value == 3
    assert predict(recommend_request("multi", label="stable"), timeout=10).model_spec.version.value == 1
    canary = predict(recommend_request("multi", label="canary"), timeout=10)
    assert canary.model_spec.version.value == 3 and canary.outputs[names.OUT_SCORES].float_val[0] == 300.0
    assert predict(recommend_request("multi", version=1), timeout=10).model_spec.version.value == 1
    assert _rpc_error(predict, recommend_request("multi", version=2)).code() == grpc.StatusCode.NOT_FOUND
    # latest {2}: versions 2 and 3.
    assert {v: s.state for v, s in _status(env, "latest2").items()} == {2: State.AVAILABLE, 3: State.AVAILABLE}
    # Status by version; by label, every version (TF Serving ignores the label), newest first.
    assert list(_status(env, "multi", version=1)) == [1]
    assert list(_status(env, "multi", label="canary")) == [3, 1]


def test_get_model_status_errors(env):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    error = _rpc_error(env["models"].GetModelStatus, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND and "nope" in error.details()
    request.model_spec.name = "rec"
    request.model_spec.version.value = 7
    assert _rpc_error(env["models"].GetModelStatus, request).code() == grpc.StatusCode.NOT_FOUND


# -- Version switches ----------------------------------------------------------------


def test_new_version_switches_without_failed_requests_and_bad_version_is_isolated(env, templates):
    stub, base = env["predict"], env["bases"]["swap"]
    seen, failures, stop = [], [], threading.Event()
    per_thread: dict[int, list[int]] = {}

    def hammer():
        mine = per_thread.setdefault(threading.get_ident(), [])
        while not stop.is_set():
            try:
                version = stub.Predict(recommend_request("swap"), timeout=10).model_spec.version.value
                mine.append(version)
                seen.append(version)
            except grpc.RpcError as e:
                failures.append(f"{e.code()}: {e.details()}")

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(seen) > 5, what="first responses")
        install_version(templates[2], base, 2)
        wait_for(lambda: seen and seen[-1] == 2, what="traffic on version 2")
        # latest {1}: version 1 is unloaded once 2 serves.
        wait_for(lambda: _status(env, "swap")[1].state == State.END, what="version 1 unloaded")
        n = len(seen)
        wait_for(lambda: len(seen) > n + 5, what="more responses after the unload")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen[0] == 1 and seen[-1] == 2
    # Each client, once served by version 2, is never served by version 1 again. (Across
    # threads a request dispatched to 1 just before the switch may finish after another
    # thread's first 2-response, so the merged order proves nothing.)
    assert seen.index(2) > 0
    for versions in per_thread.values():
        if 2 in versions:
            assert 1 not in versions[versions.index(2):], versions

    # A complete version 3 whose warmup fails is reported, and version 2 keeps serving.
    # (An incomplete or unparseable one is not even tried: tests/serving/test_model_lifecycle.py.)
    install_version(templates["bad_warmup"], base, 3)
    wait_for(lambda: 3 in _status(env, "swap") and _status(env, "swap")[3].state == State.END, what="v3 failure")
    status = _status(env, "swap")
    assert status[3].status.error_code != 0 and "version 3" in status[3].status.error_message
    assert status[2].state == State.AVAILABLE
    assert stub.Predict(recommend_request("swap"), timeout=10).model_spec.version.value == 2
    # Not retried on every poll while the directory is unchanged.
    time.sleep(POLL_S * 4)
    failed = env["server"].metrics.model_loads.labels("swap", "failure")._value.get()
    assert failed == 1


def test_reload_config_adds_and_removes_models(env, templates, tmp_path):
    base = make_base(tmp_path, templates, "added", [2])
    config = parse_model_server_config(env["config_text"])
    for model in config.model_config_list.config:  # TF Serving refuses reloads without a platform
        model.model_platform = "tensorflow"
    added = config.model_config_list.config.add()
    added.name, added.base_path, added.model_platform = "added", base, "tensorflow"
    request = model_management_pb2.ReloadConfigRequest(config=config)
    response = env["models"].HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    assert env["predict"].Predict(recommend_request("added"), timeout=10).model_spec.version.value == 2

    original = parse_model_server_config(env["config_text"])
    for model in original.model_config_list.config:
        model.model_platform = "tensorflow"
    env["models"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=original), timeout=60)
    error = _rpc_error(env["predict"].Predict, recommend_request("added"))
    assert error.code() == grpc.StatusCode.NOT_FOUND

    bad = model_server_config_pb2.ModelServerConfig()
    bad.model_config_list.config.add(name="x", base_path="/tmp/x", model_platform="pytorch")
    error = _rpc_error(env["models"].HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest(config=bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "pytorch" in error.details()
    assert env["predict"].Predict(recommend_request("rec"), timeout=10).model_spec.version.value == 1


# -- REST ---------------------------------------------------------------------------


def test_rest_predict_row_and_columnar(env):
    url = env["server"].rest_url + "/v1/models/rec:predict"
    status, body = _http(url, {"signature_name": "recommend",
                               "instances": [{"user_id": "a", "k": 1}, {"user_id": {"b64": "Yg=="}, "k": 2}]})
    assert status == 200
    assert body == {"predictions": [
        {"item_ids": ["a/0", ""], "scores": [100.0, float("-inf")]},
        {"item_ids": ["b/0", "b/1"], "scores": [100.0, 101.0]},
    ]}
    status, body = _http(env["server"].rest_url + "/v1/models/multi/labels/stable:predict",
                         {"inputs": {"user_id": ["a"], "k": [1]}})
    assert status == 200 and body == {"outputs": {"item_ids": [["a/0"]], "scores": [[100.0]]}}
    status, body = _http(env["server"].rest_url + "/v1/models/multi/versions/3:predict",
                         {"inputs": {"user_id": ["a"], "k": [1]}})
    assert status == 200 and body["outputs"]["scores"] == [[300.0]]


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/v1/models/nope:predict", {"instances": [{"user_id": "a", "k": 1}]}, 404, "nope"),
    ("/v1/models/rec/versions/9:predict", {"instances": [{"user_id": "a", "k": 1}]}, 404, "Specific(rec, 9)"),
    ("/v1/models/rec:predict", b"{not json", 400, "JSON Parse error"),
    ("/v1/models/rec:predict", {"signature_name": "nosig", "inputs": {}}, 400, "nosig"),
    ("/v1/models/rec:predict", {"instances": [{"user_id": "a"}]}, 400, "'k'"),
    ("/v1/models/rec:predict", {"inputs": {"user_id": ["a"], "k": ["x"]}}, 400, "'k'"),
    ("/v1/models/rec:predict", {"inputs": {"user_id": ["a"], "k": [1.5]}}, 400, "is not of expected type: int32"),
    ("/v1/models/rec:predict", {"instances": [], "inputs": {}}, 400, "instances"),
    ("/v1/nothing", None, 400, "Malformed request"),
])
def test_rest_errors(env, path, body, status, fragment):
    got_status, got = _http(env["server"].rest_url + path, body)
    assert got_status == status
    assert fragment in got["error"]


def test_rest_status_metadata_and_health(env):
    rest = env["server"].rest_url
    status, body = _http(rest + "/v1/models/multi")
    assert status == 200
    assert body["model_version_status"] == [  # newest first, as TF Serving lists them
        {"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    ]
    status, body = _http(rest + "/v1/models/multi/versions/1")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]
    status, body = _http(rest + "/v1/models/rec/metadata")
    assert status == 200 and body["model_spec"] == {"name": "rec", "signature_name": "", "version": "1"}
    sig = body["metadata"]["signature_def"]["signature_def"][names.RECOMMEND_SIGNATURE]
    assert sig["inputs"][names.K]["dtype"] == "DT_INT32"
    status, body = _http(rest + "/healthz")
    assert status == 200 and body["models"]["rec"] == [1]


def test_health_is_503_until_every_model_has_a_version(tmp_path, templates):
    base = tmp_path / "empty"
    base.mkdir()
    config = parse_model_server_config(_config_text([f'name: "empty" base_path: "{base}"']))
    with ModelServer(config, metrics_port=None, poll_interval_s=POLL_S, max_message_size_bytes=4096) as server:
        status, body = _http(server.rest_url + "/healthz")
        assert status == 503 and "model empty" in body["error"]
        # Requests before any version loaded: NOT_FOUND, and message size limits hold.
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert _rpc_error(stub.Predict, recommend_request("empty")).code() == grpc.StatusCode.NOT_FOUND
            big = recommend_request("empty", ["x" * 5000], [1])
            assert _rpc_error(stub.Predict, big).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status, body = _http(server.rest_url + "/v1/models/empty:predict", {"inputs": {"user_id": ["x" * 5000]}})
        assert status == 413 and "4096" in body["error"]
        with pytest.raises(TimeoutError, match="empty"):
            server.wait_until_available(0.3)
        install_version(templates[1], str(base), 1)
        server.wait_until_available(30)
        assert _http(server.rest_url + "/healthz")[0] == 200


# -- Metrics -------------------------------------------------------------------------


def test_prometheus_metrics(env):
    env["predict"].Predict(recommend_request("rec"), timeout=10)
    _rpc_error(env["predict"].Predict, recommend_request("no_such_model"))
    with urllib.request.urlopen(f"http://127.0.0.1:{env['server'].metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'recsys_model_server_requests_total{api="Predict",model="rec",signature="recommend",status="OK"}' in text
    assert 'recsys_model_server_request_errors_total{api="Predict",model="<unknown>",status="NOT_FOUND"}' in text
    assert 'recsys_model_server_request_latency_seconds_count{api="Predict",model="rec",signature="recommend"}' in text
    assert 'recsys_model_server_loaded_versions{model="multi"} 2.0' in text
    assert 'recsys_model_server_model_loads_total{model="rec",outcome="success"} 1.0' in text


# -- Batching ------------------------------------------------------------------------


def test_batching_merges_concurrent_requests(tmp_path, templates):
    base = make_base(tmp_path, templates, "rec", [1])
    config = parse_model_server_config(_config_text([f'name: "rec" base_path: "{base}"']))
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=100_000, num_batch_threads=1)
    with ModelServer(config, rest_port=None, batching=options, poll_interval_s=POLL_S) as server:
        server.wait_until_available(30)
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            n_threads, results, errors = 6, {}, []
            barrier = threading.Barrier(n_threads)

            def client(i):
                rows = 1 + i % 2
                x = [[i, j] for j in range(rows)]
                users = [f"user{i}-{j}" for j in range(rows)]
                barrier.wait()
                try:
                    response = stub.Predict(score_request("rec", x, users), timeout=10)
                    results[i] = (x, users, response)
                except grpc.RpcError as e:
                    errors.append(e.details())

            threads = [threading.Thread(target=client, args=(i,)) for i in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            for x, users, response in results.values():
                assert tf.make_ndarray(response.outputs["sum"]).tolist() == [100.0 + a + b for a, b in x]
                assert [u.decode() for u in tf.make_ndarray(response.outputs["user"])] == users
            assert server.batcher.max_rows_seen > 2
            text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
            assert 'recsys_model_server_batch_size_bucket{le="1.0",model="rec"}' in text

            # Too many rows for one batch, and a deadline that expires in the queue.
            error = _rpc_error(stub.Predict, score_request("rec", [[0, 0]] * 9, ["u"] * 9))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "8" in error.details()
            error = _rpc_error(stub.Predict, score_request("rec", [[0, 0]], ["u"]), timeout=0.03)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            wait_for(lambda: server.metrics.requests.labels("Predict", "rec", "score", "DEADLINE_EXCEEDED")._value.get() == 1,
                      what="server-side DEADLINE_EXCEEDED")
