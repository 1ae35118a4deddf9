"""Config parsing, infra validation and the command line of the model server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.support.model_servers import make_base, recommend_request
from serving import names
from serving.model_server import (
    BatchingOptions,
    ConfigError,
    InfraValidationError,
    infra_validate,
    load_model_server_config,
    parse_batching_parameters,
    parse_model_server_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- Config ---------------------------------------------------------------------------


def test_default_models_config_names_every_model():
    config = load_model_server_config(os.path.join(REPO, "serving", "models.config"))
    models = {m.name: m for m in config.model_config_list.config}
    assert tuple(models) == names.ALL_MODELS
    for name, model in models.items():
        # Absolute, under TF Serving's docker mount point, so tensorflow_model_server takes the file as is.
        assert model.base_path == f"/models/{name}" and model.model_platform == "tensorflow"
        assert model.model_version_policy.latest.num_versions == 2


def test_model_config_errors():
    with pytest.raises(ConfigError, match="not a valid text-format"):
        parse_model_server_config("model_config_list { config { nme: 'x' } }")
    with pytest.raises(ConfigError, match="duplicate"):
        parse_model_server_config(
            "model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' base_path: '/b' } }")
    with pytest.raises(ConfigError, match="base_path is required"):
        parse_model_server_config("model_config_list { config { name: 'a' } }")
    with pytest.raises(ConfigError, match="remote base_path"):
        parse_model_server_config("model_config_list { config { name: 'a' base_path: 'gs://b/a' } }")


def test_batching_parameters_both_syntaxes():
    tf_serving_style = """
        # TF Serving's own file
        max_batch_size { value: 16 }
        batch_timeout_micros { value: 500 }
        num_batch_threads { value: 3 }
        max_enqueued_batches { value: 7 }
        pad_variable_length_inputs: true
    """
    assert parse_batching_parameters(tf_serving_style) == BatchingOptions(16, 500, 3, 7)
    assert parse_batching_parameters("max_batch_size: 4") == BatchingOptions(max_batch_size=4)
    with pytest.raises(ConfigError, match="unknown batching parameter"):
        parse_batching_parameters("max_batch: 4")
    with pytest.raises(ConfigError, match="max_batch_size"):
        parse_batching_parameters("max_batch_size { value: 0 }")


# -- Infra validation -------------------------------------------------------------------


def test_infra_validate_success(templates):
    report = infra_validate(templates[1], "retrieval", timeout_s=60)
    assert report["requests_sent"] == 2 and report["requests_ok"] == 2
    assert report["model_name"] == "retrieval" and report["version"] == 1
    assert report["latency_ms"]["max"] >= report["latency_ms"]["p50"] > 0


def test_infra_validate_failures(templates, tmp_path):
    with pytest.raises(InfraValidationError, match="no warmup file"):
        infra_validate(templates["no_warmup"], "ranking", timeout_s=30)
    with pytest.raises(InfraValidationError, match="failed to warm up.*userid"):
        infra_validate(templates["bad_warmup"], "ranking", timeout_s=30)
    with pytest.raises(InfraValidationError, match="not a SavedModel"):
        infra_validate(str(tmp_path), "ranking", timeout_s=30)


# -- CLI ---------------------------------------------------------------------------------


def test_cli_serves_and_stops_on_sigterm(tmp_path, templates):
    base = make_base(tmp_path, templates, names.RANKING_MODEL, [2])
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "{names.RANKING_MODEL}" base_path: "{base}" }} }}')
    batching = tmp_path / "batching.txt"
    batching.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.model_server", "--model-config", str(config), "--port", "0",
         "--rest_api_port", "none", "--monitoring_port", "none", "--file_system_poll_wait_seconds", "0.5",
         "--enable_batching", "--batching_parameters_file", str(batching), "--log_level", "WARNING"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    lines, address, loaded = [], None, False
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (address and loaded):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"gRPC listening on (\S+)", line):
                address = m.group(1)
            loaded = loaded or f"loaded model {names.RANKING_MODEL} version 2" in line
        assert address and loaded, "".join(lines)
        with grpc.insecure_channel(address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(recommend_request(names.RANKING_MODEL), timeout=10)
        assert response.model_spec.version.value == 2
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0, out
        assert "shutting down" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_rejects_bad_config(tmp_path):
    from serving.model_server.cli import main

    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { name: 'x' } }")
    assert main(["--model_config_file", str(bad), "--port", "0"]) == 2
