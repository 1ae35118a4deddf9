"""Request logging (TF Serving's logging_config) against a real server on 127.0.0.1.

Each test starts a ModelServer, sends real gRPC / REST calls, stops it (which
closes the files) and reads the TFRecord files back with read_prediction_logs.
"""

from __future__ import annotations

import glob
import json
import os
import re
import threading
import time
import urllib.request

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.support.model_servers import make_base, recommend_request
from serving import names
from serving.model_server import (
    ConfigError,
    ModelServer,
    RequestLoggingOptions,
    parse_model_server_config,
    read_prediction_logs,
)
from serving.model_server.cli import main as serve_main
from serving.model_server.request_log import log_files

POLL_S = 0.2
FILE_NAME = re.compile(r"(?P<prefix>.+)-(?P<stamp>\d{8}T\d{6}Z)-(?P<seq>\d{5})\.tfrecord")


def _logging_config(prefix: str, rate: float = 1.0, collector: str = "file") -> str:
    return (f'logging_config {{ log_collector_config {{ type: "{collector}" filename_prefix: "{prefix}" }} '
            f'sampling_config {{ sampling_rate: {rate} }} }}')


def _config_text(*entries: str) -> str:
    return "model_config_list {\n" + "\n".join(f"  config {{ {e} }}" for e in entries) + "\n}\n"


def _config(*entries: str):
    return parse_model_server_config(_config_text(*entries))


def _predict(server: ModelServer, request) -> object:
    with grpc.insecure_channel(server.grpc_address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def _rest_predict(server: ModelServer, path: str, body: dict) -> dict:
    request = urllib.request.Request(server.rest_url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _metric(server: ModelServer, model: str, outcome: str) -> float:
    """Reads recsys_model_server_request_log_records_total from the real /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    line = f'recsys_model_server_request_log_records_total{{model="{model}",outcome="{outcome}"}} '
    values = [float(l[len(line):]) for l in text.splitlines() if l.startswith(line)]
    return values[0] if values else 0.0


def _all_files(root) -> list[str]:
    return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(str(root), "**", "*"), recursive=True)
                  if os.path.isfile(p))


def test_rate_one_logs_every_successful_grpc_and_rest_predict(tmp_path, templates):
    logs = tmp_path / "logs"
    config = _config(
        f'name: "rec" base_path: "{make_base(tmp_path, templates, "rec", [1, 2])}" {_logging_config(logs / "rec")}',
        f'name: "quiet" base_path: "{make_base(tmp_path, templates, "quiet", [1])}"',
    )
    sent, received = [], []
    with ModelServer(config, poll_interval_s=POLL_S) as server:
        server.wait_until_available(60)
        start = int(time.time())
        for i in range(3):
            request = recommend_request("rec", [f"user{i}", "b"], [1, 2])  # no version: the server picks 2
            sent.append(request)
            received.append(_predict(server, request))
        sent.append(recommend_request("rec", ["x"], [1], signature=""))  # default signature
        received.append(_predict(server, sent[-1]))
        rest = _rest_predict(server, "/v1/models/rec/versions/2:predict",
                             {"signature_name": "recommend", "instances": [{"user_id": "r", "k": 1}]})
        assert rest == {"predictions": [{"item_ids": ["r/0"], "scores": [200.0]}]}
        # Not logged: failed requests (unknown signature, bad input, missing version) and other models.
        for bad in (recommend_request("rec", signature="nosig"), recommend_request("rec", version=7)):
            with pytest.raises(grpc.RpcError):
                _predict(server, bad)
        _predict(server, recommend_request("quiet"))
        end = int(time.time())
        deadline = time.monotonic() + 10
        while _metric(server, "rec", "logged") < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _metric(server, "rec", "logged") == 5
        assert _metric(server, "rec", "dropped") == 0

    # Stopping closed the file: one complete .tfrecord, no .partial left, nothing for "quiet".
    files = _all_files(logs)
    assert len(files) == 1 and FILE_NAME.fullmatch(files[0])["prefix"] == "rec", files
    entries = list(read_prediction_logs(str(logs / "rec-*.tfrecord")))
    assert len(entries) == 5
    for entry, request, response in zip(entries, sent, received):
        meta = entry.log_metadata
        assert meta.model_spec.name == "rec" and meta.model_spec.version.value == 2  # the version that served
        assert meta.model_spec.signature_name == response.model_spec.signature_name
        assert meta.sampling_config.sampling_rate == 1.0
        assert start <= meta.timestamp_secs <= end
        assert entry.predict_log.request == request  # exactly what the client sent
        assert entry.predict_log.response == response  # exactly what it got back
    assert entries[3].log_metadata.model_spec.signature_name == names.DEFAULT_SIGNATURE

    # REST is logged as the equivalent gRPC request and response.
    rest_log = entries[4].predict_log
    assert rest_log.request.model_spec.version.value == 2
    assert rest_log.request.model_spec.signature_name == "recommend"
    assert list(rest_log.request.inputs[names.USER_ID].string_val) == [b"r"]
    assert list(rest_log.request.inputs[names.K].int_val) == [1]
    assert list(rest_log.response.outputs[names.OUT_ITEM_IDS].string_val) == [b"r/0"]
    assert list(rest_log.response.outputs[names.OUT_SCORES].float_val) == [200.0]


def test_rate_zero_writes_nothing(tmp_path, templates):
    logs = tmp_path / "logs"
    config = _config(
        f'name: "rec" base_path: "{make_base(tmp_path, templates, "rec", [1])}" {_logging_config(logs / "rec", 0.0)}')
    options = RequestLoggingOptions(default_dir=str(tmp_path / "default_logs"), default_sampling_rate=0.0)
    with ModelServer(config, poll_interval_s=POLL_S, request_logging=options) as server:
        server.wait_until_available(60)
        for _ in range(20):
            _predict(server, recommend_request("rec"))
        assert _metric(server, "rec", "logged") == 0
    assert not logs.exists() or _all_files(logs) == []
    assert not (tmp_path / "default_logs").exists() or _all_files(tmp_path / "default_logs") == []


def test_server_wide_log_dir_and_a_fractional_rate(tmp_path, templates):
    logs = tmp_path / "all_logs"
    config = _config(f'name: "a" base_path: "{make_base(tmp_path, templates, "a", [1])}"',
                     f'name: "b" base_path: "{make_base(tmp_path, templates, "b", [1])}"')
    options = RequestLoggingOptions(default_dir=str(logs), default_sampling_rate=0.5)
    n = 200
    with ModelServer(config, rest_port=None, poll_interval_s=POLL_S, request_logging=options) as server:
        server.wait_until_available(60)
        for _ in range(n):
            _predict(server, recommend_request("a"))
        _predict(server, recommend_request("b"))
    # One flat directory: model m logs to DIR/m-<timestamp>-<seq>.tfrecord.
    assert {FILE_NAME.fullmatch(os.path.basename(p))["prefix"] for p in log_files(str(logs))} <= {"a", "b"}
    a_logs = list(read_prediction_logs(str(logs / "a-*.tfrecord")))
    # Binomial(200, 0.5): outside [60, 140] has probability < 1e-8.
    assert 60 <= len(a_logs) <= 140, len(a_logs)
    assert {e.log_metadata.model_spec.name for e in a_logs} == {"a"}
    assert {e.log_metadata.sampling_config.sampling_rate for e in a_logs} == {0.5}


@pytest.mark.parametrize("options, expected_files", [
    (RequestLoggingOptions(max_file_records=3), [3, 3, 3, 1]),
    (RequestLoggingOptions(max_file_bytes=1), [1] * 10),  # every record fills a file
])
def test_files_rotate_by_records_and_bytes(tmp_path, templates, options, expected_files):
    logs = tmp_path / "logs"
    config = _config(f'name: "rec" base_path: "{make_base(tmp_path, templates, "rec", [1])}" '
                     f'{_logging_config(logs / "rec")}')
    with ModelServer(config, rest_port=None, poll_interval_s=POLL_S, request_logging=options) as server:
        server.wait_until_available(60)
        for i in range(10):
            _predict(server, recommend_request("rec", [f"user{i}"], [1]))
    paths = log_files(str(logs))
    assert [len(list(read_prediction_logs(p))) for p in paths] == expected_files
    assert [int(FILE_NAME.fullmatch(os.path.basename(p))["seq"]) for p in paths] == list(range(len(paths)))
    # Sorted file names keep the order the requests came in.
    users = [e.predict_log.request.inputs[names.USER_ID].string_val[0] for e in read_prediction_logs(paths)]
    assert users == [f"user{i}".encode() for i in range(10)]


def test_old_files_are_closed_while_serving(tmp_path, templates):
    logs = tmp_path / "logs"
    config = _config(f'name: "rec" base_path: "{make_base(tmp_path, templates, "rec", [1])}" '
                     f'{_logging_config(logs / "rec")}')
    options = RequestLoggingOptions(max_file_age_s=0.5)
    with ModelServer(config, rest_port=None, poll_interval_s=POLL_S, request_logging=options) as server:
        server.wait_until_available(60)
        _predict(server, recommend_request("rec", ["early"], [1]))
        deadline = time.monotonic() + 15
        while not glob.glob(str(logs / "*.tfrecord")) and time.monotonic() < deadline:
            time.sleep(0.1)
        # A complete file is readable while the server still runs; no .partial is left open.
        assert [e.predict_log.request.inputs[names.USER_ID].string_val[0]
                for e in read_prediction_logs(str(logs))] == [b"early"]
        assert not glob.glob(str(logs / "*.partial"))


def test_a_writer_that_cannot_keep_up_drops_records_and_every_request_succeeds(tmp_path, templates):
    """Queue of one, 512 KiB requests from many threads: the writer cannot keep up."""
    logs = tmp_path / "logs"
    config = _config(f'name: "rec" base_path: "{make_base(tmp_path, templates, "rec", [1])}" '
                     f'{_logging_config(logs / "rec")}')
    options = RequestLoggingOptions(queue_size=1, max_file_bytes=1)  # one file per record: slow writes
    big_users = ["u" * (128 * 1024) + str(i) for i in range(4)]
    errors, done = [], []
    with ModelServer(config, rest_port=None, poll_interval_s=POLL_S, request_logging=options) as server:
        server.wait_until_available(60)
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def client():
                for _ in range(10):
                    try:
                        response = stub.Predict(recommend_request("rec", big_users, [1] * 4), timeout=30)
                        assert response.model_spec.version.value == 1
                        done.append(1)
                    except Exception as e:  # noqa: BLE001 - collected and asserted below
                        errors.append(repr(e))

            for _ in range(5):  # rounds until the queue overflowed at least once (nearly always the first)
                threads = [threading.Thread(target=client) for _ in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if _metric(server, "rec", "dropped") > 0:
                    break
        dropped = _metric(server, "rec", "dropped")
    assert errors == []
    assert dropped > 0
    logged = server.metrics.request_logs.labels("rec", "logged")._value.get()
    assert logged + dropped == len(done)  # every sampled call is either written or counted as dropped
    assert sum(1 for _ in read_prediction_logs(str(logs))) == logged


def test_reload_turns_logging_on_and_rejects_a_bad_logging_config(tmp_path, templates):
    logs = tmp_path / "logs"
    base = make_base(tmp_path, templates, "rec", [1])
    entry = f'name: "rec" base_path: "{base}" model_platform: "tensorflow"'
    with ModelServer(_config(entry), rest_port=None, poll_interval_s=POLL_S,
                     request_logging=RequestLoggingOptions(allowed_dirs=(str(logs),))) as server:
        server.wait_until_available(60)
        with grpc.insecure_channel(server.grpc_address) as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(recommend_request("rec", ["before"], [1]), timeout=30)
            bad = text_format.Parse(_config_text(f'{entry} {_logging_config(logs / "rec", 1.5)}'),
                                    model_server_config_pb2.ModelServerConfig())  # not validated here
            with pytest.raises(grpc.RpcError) as error:
                models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=bad), timeout=60)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "sampling_rate must be in [0, 1]" in error.value.details()
            good = _config(f'{entry} {_logging_config(logs / "rec")}')
            models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=good), timeout=60)
            stub.Predict(recommend_request("rec", ["after"], [1]), timeout=30)
    users = [e.predict_log.request.inputs[names.USER_ID].string_val[0] for e in read_prediction_logs(str(logs))]
    assert users == [b"after"]


@pytest.mark.parametrize("logging_config, message", [
    (_logging_config("/tmp/x/rec", collector="kafka"), "type 'kafka' is not supported; use one of ['file']"),
    (_logging_config("/tmp/x/rec", 1.5), "sampling_rate must be in [0, 1], got 1.5"),
    (_logging_config("/tmp/x/rec", -0.1), "sampling_rate must be in [0, 1]"),
    (_logging_config(""), "filename_prefix is required"),
    ('logging_config { sampling_config { sampling_rate: 1 } }', "type '' is not supported"),
    (_logging_config("/tmp/x/"), "names a directory"),
    (_logging_config("gs://bucket/rec"), "remote filename_prefix"),
])
def test_invalid_logging_config_is_a_startup_error(tmp_path, logging_config, message):
    text = f'model_config_list {{ config {{ name: "rec" base_path: "{tmp_path}" {logging_config} }} }}'
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_model_server_config(text)
    config_file = tmp_path / "models.config"
    config_file.write_text(text)
    assert serve_main(["--model_config_file", str(config_file), "--port", "0"]) == 2


def test_other_logging_startup_errors(tmp_path, capsys):
    logged = _logging_config(tmp_path / "logs" / "same")
    with pytest.raises(ConfigError, match="several models log to filename_prefix"):
        _config(f'name: "a" base_path: "/a" {logged}', f'name: "b" base_path: "/b" {logged}')
    # A log directory that cannot be created (its parent is a file).
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create request log directory"):
        ModelServer(_config(f'name: "a" base_path: "/a" {_logging_config(blocker / "sub" / "a")}'))
    config_file = tmp_path / "models.config"
    config_file.write_text(f'model_config_list {{ config {{ name: "a" base_path: "{tmp_path}" }} }}')
    for flags, message in [
        (["--request_log_dir", str(blocker / "sub")], "cannot create request log directory"),
        (["--request_log_dir", str(tmp_path), "--request_log_sampling_rate", "2"], "sampling rate must be in [0, 1]"),
        (["--request_log_sampling_rate", "0.5"], "needs --request_log_dir"),
        (["--request_log_dir", str(tmp_path), "--request_log_queue_size", "0"], "queue_size must be an integer >= 1"),
    ]:
        assert serve_main(["--model_config_file", str(config_file), "--port", "0", *flags]) == 2
        assert message in capsys.readouterr().err


def test_read_prediction_logs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prediction_logs(str(tmp_path / "missing.tfrecord"))
    with pytest.raises(FileNotFoundError, match="no request log files"):
        read_prediction_logs(str(tmp_path / "*.tfrecord"))
    # Globs and directories skip files still being written.
    (tmp_path / "x-20260101T000001Z-00001.tfrecord.partial").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x-20260101T000002Z-00002.tfrecord").write_bytes(b"")
    assert [os.path.basename(p) for p in log_files(str(tmp_path / "**" / "x-*"))] == [
        "x-20260101T000002Z-00002.tfrecord"]
    assert log_files(str(tmp_path)) == [str(tmp_path / "sub" / "x-20260101T000002Z-00002.tfrecord")]
    assert sum(1 for _ in read_prediction_logs(str(tmp_path / "sub"))) == 0  # an empty file holds no records
    corrupt = tmp_path / "x-20260101T000000Z-00000.tfrecord"
    corrupt.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="x-20260101T000000Z-00000.tfrecord: request log record 0 is corrupt"):
        list(read_prediction_logs([str(tmp_path)]))
