"""Request-side behaviour that must match TF Serving (codes and messages from its source), on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import names
from serving.model_server import ModelServer, parse_model_server_config
from serving.model_server.tf_serving_protos import DEFAULT_PROMETHEUS_PATH
from tests.support.model_servers import make_base, recommend_request
from tests.support.request_surface import http

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREDICT_ONLY = "Expected one input Tensor."


def _entry(name: str, base: str, extra: str = "") -> str:
    return f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {extra} }}'


@pytest.fixture(scope="module")
def env(tmp_path_factory, templates):
    tmp = tmp_path_factory.mktemp("parity")
    bases = {"rec": make_base(tmp, templates, "rec", [1]), "multi": make_base(tmp, templates, "multi", [1, 2])}
    text = "model_config_list { " + _entry("rec", bases["rec"]) + _entry(
        "multi", bases["multi"], 'model_version_policy { specific { versions: 1 versions: 2 } } '
                                 'version_labels { key: "stable" value: 1 }') + " }"
    server = ModelServer(parse_model_server_config(text), rest_port=0, metrics_port=None,
                         metrics_path=DEFAULT_PROMETHEUS_PATH)
    server.start()
    server.wait_until_available(60)
    deadline = time.monotonic() + 60
    while server.manager.available_versions().get("multi") != [1, 2] and time.monotonic() < deadline:
        time.sleep(0.05)
    channel = grpc.insecure_channel(server.grpc_address)
    yield {"server": server, "bases": bases, "text": text, "url": server.rest_url,
           "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "models": model_service_pb2_grpc.ModelServiceStub(channel)}
    channel.close()
    server.stop()


def _error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value


# -- model spec -----------------------------------------------------------------------


def test_missing_model_spec_and_empty_name(env):
    p, m = env["predict"], env["models"]
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    for call, request in [(p.Predict, predict_pb2.PredictRequest()), (p.GetModelMetadata, metadata),
                          (m.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()),
                          (p.Classify, classification_pb2.ClassificationRequest()),
                          (p.Regress, regression_pb2.RegressionRequest())]:
        e = _error(call, request)
        assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"), call
    for call, request in [(p.Predict, predict_pb2.PredictRequest()), (p.GetModelMetadata, metadata),
                          (p.Classify, classification_pb2.ClassificationRequest()),
                          (p.MultiInference, inference_pb2.MultiInferenceRequest())]:
        if call is not p.MultiInference:
            request.model_spec.SetInParent()  # present, with an empty name
        e = _error(call, request)
        assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    # GetModelStatus looks the empty name up (get_model_status_impl.cc) and finds nothing.
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.SetInParent()
    e = _error(m.GetModelStatus, request)
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model ")


def test_metadata_field_messages(env):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["nope"])
    request.model_spec.name = "rec"
    assert _error(env["predict"].GetModelMetadata, request).details() == "Metadata field nope is not supported"


# -- reload validation ----------------------------------------------------------------


def _reload_raw(env, text: str):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return env["models"].HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                                   timeout=60)


def _reload_error(env, text: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _reload_raw(env, text)
    return info.value


def test_reload_label_on_an_unavailable_version_is_refused_and_nothing_changes(env):
    text = env["text"].replace('key: "stable" value: 1', 'key: "stable" value: 7')
    e = _reload_error(env, text)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.details() == ("Request to assign label to version 7 of model multi, which is not currently "
                           "available for inference")
    request = recommend_request("multi", label="stable")
    assert env["predict"].Predict(request, timeout=10).model_spec.version.value == 1
    # Moving the label to another available version works.
    _reload_raw(env, env["text"].replace('key: "stable" value: 1', 'key: "stable" value: 2'))
    assert env["predict"].Predict(request, timeout=10).model_spec.version.value == 2
    _reload_raw(env, env["text"])


def test_reload_without_platform_or_with_a_relative_base_path_is_invalid(env):
    no_platform = env["text"].replace('model_platform: "tensorflow"', "", 1)
    e = _reload_error(env, no_platform)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == ("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                           "ModelServerConfig::model_platform, model name is rec")
    relative = "model_config_list { " + _entry("rec", "runs/rec") + " }"
    e = _reload_error(env, relative)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == "Expected model rec to have an absolute path or URI; got base_path()=runs/rec"
    assert env["predict"].Predict(recommend_request("rec"), timeout=10).model_spec.version.value == 1


def test_allow_version_labels_for_unavailable_models(tmp_path, templates):
    base = make_base(tmp_path, templates, "m", [1])
    text = "model_config_list { " + _entry("m", base, 'version_labels { key: "a" value: 1 }') + " }"
    with ModelServer(parse_model_server_config(text), rest_port=None, metrics_port=None,
                     allow_version_labels_for_unavailable_models=True) as server:
        server.wait_until_available(60)
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)

            def reload(labels: str):
                config = parse_model_server_config("model_config_list { " + _entry("m", base, labels) + " }")
                return stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                                      timeout=60)

            reload('version_labels { key: "a" value: 1 } version_labels { key: "new" value: 9 }')  # new label: ok
            with pytest.raises(grpc.RpcError) as info:  # moving an existing label to an unavailable version: not
                reload('version_labels { key: "a" value: 9 }')
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- tensor decoding ---------------------------------------------------------------------


def test_string_tensor_content_is_accepted(env):
    request = recommend_request("rec", ["a", "bb"], [1, 1])
    proto = request.inputs[names.USER_ID]
    del proto.string_val[:]
    proto.tensor_content = bytes([1, 2]) + b"abb"  # TF's encoding: varint lengths, then the bytes
    response = env["predict"].Predict(request, timeout=10)
    assert tf.make_ndarray(response.outputs[names.OUT_ITEM_IDS]).tolist() == [[b"a/0"], [b"bb/0"]]
    proto.tensor_content = bytes([1, 5]) + b"abb"
    e = _error(env["predict"].Predict, request)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "tensor parsing error" in e.details()


def test_typed_fields_follow_tensor_from_proto(env):
    # More values than the shape: the first ones; fewer: the last repeats; none: zeros.
    request = recommend_request("rec", ["a", "b"], [1, 1])
    request.inputs[names.K].ClearField("tensor_content")
    request.inputs[names.K].int_val[:] = [1, 2, 3, 4]
    ids = tf.make_ndarray(env["predict"].Predict(request, timeout=10).outputs[names.OUT_ITEM_IDS])
    assert ids.tolist() == [[b"a/0", b""], [b"b/0", b"b/1"]]
    request.inputs[names.USER_ID].string_val[:] = [b"z"]
    request.inputs[names.K].int_val[:] = [2]
    ids = tf.make_ndarray(env["predict"].Predict(request, timeout=10).outputs[names.OUT_ITEM_IDS])
    assert ids.tolist() == [[b"z/0", b"z/1"], [b"z/0", b"z/1"]]
    request.inputs[names.K].ClearField("int_val")
    response = env["predict"].Predict(request, timeout=10)
    assert tf.make_ndarray(response.outputs[names.OUT_SCORES]).shape == (2, 0)
    request.inputs[names.K].CopyFrom(tf.make_tensor_proto(np.array([1, 2], np.int32)))  # tensor_content
    assert request.inputs[names.K].tensor_content
    assert tf.make_ndarray(env["predict"].Predict(request, timeout=10).outputs[names.OUT_SCORES]).shape == (2, 2)
    assert request.inputs[names.K].dtype == types_pb2.DT_INT32


# -- Classify / Regress / MultiInference ---------------------------------------------------


def test_classify_regress_multi_inference_on_predict_signatures(env):
    p = env["predict"]
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "rec"
    e = _error(p.Classify, classify)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, PREDICT_ONLY)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "rec", "nosig"
    e = _error(p.Regress, regress)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nosig")
    regress.model_spec.name = "nope"
    assert _error(p.Regress, regress).code() == grpc.StatusCode.NOT_FOUND
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add(method_name="tensorflow/serving/classify")
    task.model_spec.name = "rec"
    e = _error(p.MultiInference, multi)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, PREDICT_ONLY)
    task.method_name = "tensorflow/serving/predict"
    e = _error(p.MultiInference, multi)
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED
    assert e.details() == "Unsupported signature method_name: tensorflow/serving/predict"


@pytest.mark.parametrize("verb", ["classify", "regress"])
def test_rest_classify_and_regress(env, verb):
    status, body = http(f"{env['url']}/v1/models/rec:{verb}", {"examples": [{"user_id": "u"}]})
    assert (status, body["error"]) == (400, PREDICT_ONLY)
    status, body = http(f"{env['url']}/v1/models/rec:{verb}", {"instances": [1]})
    assert status == 400 and "'examples' is expected" in body["error"]
    status, _ = http(f"{env['url']}/v1/models/nope:{verb}", {"examples": [{}]})
    assert status == 404


# -- REST paths and JSON ----------------------------------------------------------------


def test_rest_paths_like_tf_serving(env):
    url = env["url"]
    body = {"instances": [{"user_id": "u", "k": 1}]}
    status, payload = http(f"{url}/v1/models/rec:explain", body)
    assert (status, payload["error"]) == (400, "Malformed request: POST /v1/models/rec:explain")
    assert http(f"{url}/V1/Models/rec:PREDICT", body)[0] == 200  # case-insensitive
    assert http(f"{url}/v1/MODELS/multi/LABELS/stable")[0] == 200
    status, payload = http(f"{url}/v1/models/rec/versions/-1:predict", body)
    assert (status, payload["error"]) == (400, "Malformed request: POST /v1/models/rec/versions/-1:predict")
    assert http(f"{url}/v1/models/rec/versions/-1")[0] == 400
    status, payload = http(f"{url}/v1/models")
    assert (status, payload["error"]) == (400, "Missing model name in request.")
    assert http(f"{url}/v1/models/rec", b"{}", method="PUT")[0] == 400
    assert http(f"{url}/v1/models/re%63/metadata")[0] == 200  # the name is URL-decoded


def test_rest_json_types_like_tf_serving(env):
    url = f"{env['url']}/v1/models/rec:predict"
    # An extra key in a columnar "inputs" object is ignored.
    status, payload = http(url, {"inputs": {"user_id": ["u"], "k": [1], "extra": [1, 2, 3]}})
    assert status == 200 and payload["outputs"][names.OUT_ITEM_IDS] == [["u/0"]]
    status, payload = http(url, {"inputs": {"user_id": ["u"]}})
    assert status == 400 and payload["error"].startswith("Missing named input: k in 'inputs' object.")
    # 3.0 is not an int32 (json_tensor.cc: IsInt); 3 is.
    status, payload = http(url, {"inputs": {"user_id": ["u"], "k": [3.0]}})
    assert status == 400 and "JSON Value: 3.0 Type: Number is not of expected type: int32" in payload["error"]
    status, payload = http(url, {"inputs": {"user_id": ["u"], "k": [2 ** 31]}})
    assert status == 400 and "is not of expected type: int32" in payload["error"]


# -- metrics ---------------------------------------------------------------------------


def test_prometheus_metrics_on_the_rest_port(env):
    env["predict"].Predict(recommend_request("rec"), timeout=10)
    http(f"{env['url']}/v1/models/nope:predict", {"instances": [1]})
    status, payload = http(env["url"] + DEFAULT_PROMETHEUS_PATH)
    text = payload["raw"]
    assert status == 200
    assert ':tensorflow:serving:request_count{model_name="rec",status="OK"}' in text
    assert ':tensorflow:serving:request_count{model_name="<unknown>",status="NOT_FOUND"}' in text
    assert ':tensorflow:serving:request_latency_count{model_name="rec",API="Predict",entrypoint="GRPC"}' in text
    assert 'API="predict",entrypoint="REST"' in text
    assert "recsys_model_server_requests_total" in text  # our own names stay


# -- command line -------------------------------------------------------------------------


def test_tensorflow_model_server_command_line(tmp_path, templates):
    """Common tensorflow_model_server flags start the server; monitoring config, SSL config and
    config-file polling work; --rest_api_port=0 means no REST."""
    from tests.support.tls import make_self_signed

    base = make_base(tmp_path, templates, "rec", [1, 2])
    config = tmp_path / "models.config"
    config.write_text("model_config_list { " + _entry("rec", base) + " }")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics/tf" }')
    cert = make_self_signed(str(tmp_path), "server")
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(f'server_key: "{cert.read_key().decode().encode("unicode_escape").decode()}"\n'
                          f'server_cert: "{cert.read_cert().decode().encode("unicode_escape").decode()}"\n')
    flags = ["--model_config_file", str(config), "--port", "0", "--rest_api_port", "auto",
             "--monitoring_port", "none", "--monitoring_config_file", str(monitoring),
             "--ssl_config_file", str(ssl_config), "--model_config_file_poll_wait_seconds", "0.5",
             "--file_system_poll_wait_seconds", "1", "--rest_api_timeout_in_ms", "5000",
             "--rest_api_num_threads", "8", "--enable_model_warmup=true", "--enable_batching=false",
             "--tensorflow_intra_op_parallelism", "2", "--tensorflow_inter_op_parallelism", "2",
             "--max_num_load_retries", "3", "--grpc_channel_arguments", "grpc.max_connection_age_ms=1000",
             "--enable_signature_method_name_check=false", "--log_level", "INFO"]
    process = subprocess.Popen([sys.executable, "-m", "serving.model_server", *flags], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONPATH": REPO})
    lines = []
    try:
        rest = grpc_address = loaded = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (rest and grpc_address and loaded):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("REST listening on "):
                rest = line.split()[-1]
            if line.startswith("gRPC listening on "):
                grpc_address = line.split()[3]
            if line.startswith("loaded model rec version 2"):
                loaded = True
        assert rest and rest.startswith("https://"), "".join(lines)
        import ssl as ssl_module
        import urllib.request

        context = ssl_module.create_default_context(cafile=cert.cert)
        with urllib.request.urlopen(rest + "/metrics/tf", context=context, timeout=10) as response:
            assert b"# TYPE :tensorflow:serving:request_count counter" in response.read()
        # Polling the config file: a label added to the file is applied.
        credentials = grpc.ssl_channel_credentials(cert.read_cert())
        with grpc.secure_channel(grpc_address, credentials) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(recommend_request("rec"), timeout=30)
            config.write_text("model_config_list { " + _entry("rec", base, 'version_labels { key: "cur" value: 2 }')
                              + " }")
            deadline = time.monotonic() + 30
            while True:
                try:
                    response = stub.Predict(recommend_request("rec", label="cur"), timeout=10)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert response.model_spec.version.value == 2
        with urllib.request.urlopen(rest + "/metrics/tf", context=context, timeout=10) as response:
            assert b':tensorflow:serving:request_count{model_name="rec",status="OK"}' in response.read()
    finally:
        process.terminate()
        out = process.communicate(timeout=30)[0]
    text = "".join(lines) + out
    assert "--max_num_load_retries=3 accepted and ignored" in text, text
    assert process.returncode == 0, text


def test_rest_api_port_zero_turns_rest_off(tmp_path, templates, capsys):
    from serving.model_server.cli import build_parser

    args = build_parser().parse_args(["--rest_api_port", "0"])
    assert args.rest_api_port is None
    assert build_parser().parse_args([]).rest_api_port is None  # TF Serving's default: off
    assert build_parser().parse_args(["--rest_api_port", "auto"]).rest_api_port == 0
    assert build_parser().parse_args(["--rest_api_port", "8501"]).rest_api_port == 8501


def test_builtin_models_config_is_absolute_and_read_from_the_serving_root(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from serving.model_server.cli import build_parser, load_config
    from serving.model_server.reload import tf_serving_refusal

    path = os.path.join(REPO, "serving", "models.config")
    with open(path) as f:
        raw = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    assert tf_serving_refusal(raw) is None  # what tensorflow_model_server checks: platform, absolute paths
    config = load_config(build_parser().parse_args(["--model_config_file", path, "--serving_root", str(tmp_path)]))
    assert [m.base_path for m in config.model_config_list.config] == [str(tmp_path / n) for n in names.ALL_MODELS]
    other = tmp_path / "other.config"
    other.write_text(text_format.MessageToString(raw))
    config = load_config(build_parser().parse_args(["--model_config_file", str(other)]))
    assert config.model_config_list.config[0].base_path == "/models/" + names.ALL_MODELS[0]  # as written


def test_monitoring_config_file(tmp_path):
    from serving.model_server.config import ConfigError
    from serving.model_server.tf_serving_protos import load_monitoring_path

    path = tmp_path / "monitoring.config"
    for text, expected in [("prometheus_config { enable: true }", DEFAULT_PROMETHEUS_PATH),
                           ('prometheus_config { enable: true path: "/m" }', "/m"),
                           ('prometheus_config { enable: false path: "/m" }', None), ("", None)]:
        path.write_text(text)
        assert load_monitoring_path(str(path)) == expected
    path.write_text("prometheus_config { enable: yes please }")
    with pytest.raises(ConfigError, match="MonitoringConfig"):
        load_monitoring_path(str(path))
