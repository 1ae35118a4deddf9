"""Infra validation: serve one exported SavedModel and replay its warmup requests.

The TFX pipeline calls `infra_validate` before pushing a model: it proves the
export loads in this server (custom ops included), that the warmup requests
run, and that real gRPC clients get answers, in the same code the production
server runs. The model directory may be a URI (``gs://`` ...): it is read through
``tf.io.gfile`` and copied into the server's local temporary base path.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.fileio import copy_tree, gfile, is_uri
from serving.model_server.config import ModelServerConfig
from serving.model_server.server import ModelServer
from serving.model_server.version_files import incomplete_reason
from serving.model_server.version_manager import State
from serving.model_server.warmup_file import read_warmup_requests, warmup_file

VALIDATION_VERSION = 1


class InfraValidationError(RuntimeError):
    """The model cannot be served; the message says why and what to fix."""


def infra_validate(model_dir: str, model_name: str, timeout_s: float = 120.0) -> dict:
    """Serves `model_dir` on free loopback ports and replays its warmup requests over gRPC.

    Args:
        model_dir: a SavedModel version directory (holds saved_model.pb and
            assets.extra/tf_serving_warmup_requests).
        model_name: the name to serve it under (requests' model_spec.name is
            rewritten to it).
        timeout_s: limit for loading plus replaying.

    Returns:
        {"model_name", "model_dir", "version", "requests_sent", "requests_ok",
         "latency_ms": {"mean", "p50", "p95", "max"}, "load_seconds"}.

    Raises:
        InfraValidationError: no SavedModel or warmup file, an incomplete SavedModel
            (version_files.py), load/warmup failure,
            timeout, or a failed request.
    """
    if not is_uri(model_dir):
        model_dir = os.path.abspath(model_dir)
    if not any(gfile.exists(os.path.join(model_dir, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
        raise InfraValidationError(f"{model_dir} is not a SavedModel directory (no saved_model.pb)")
    reason = incomplete_reason(model_dir)
    if reason is not None:  # the server would skip it as still being written, until the timeout
        raise InfraValidationError(f"{model_dir} is an incomplete SavedModel ({reason}); export it again")
    if not gfile.exists(warmup_file(model_dir)):
        raise InfraValidationError(
            f"no warmup file at {warmup_file(model_dir)}; export one (PredictionLog TFRecord) so the model can be validated"
        )
    requests = read_warmup_requests(model_dir)
    if not requests:
        raise InfraValidationError(f"warmup file {warmup_file(model_dir)} holds no requests")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="infra_validation_") as base:
        model_base = os.path.join(base, model_name)
        os.makedirs(model_base)
        version_dir = os.path.join(model_base, str(VALIDATION_VERSION))
        if is_uri(model_dir):  # the server serves local directories: a local copy of the remote model
            copy_tree(model_dir, version_dir)
        else:
            os.symlink(model_dir, version_dir)
        config = ModelServerConfig()
        model = config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = model_name, model_base, "tensorflow"
        server = ModelServer(config, grpc_port=0, rest_port=None, metrics_port=None, poll_interval_s=1.0)
        server.start()
        try:
            _wait_loaded(server, model_name, started + timeout_s)
            load_seconds = time.monotonic() - started
            latencies = _replay(server, model_name, requests, started + timeout_s)
        finally:
            server.stop(grace_s=1.0)
    latencies_ms = sorted(x * 1000 for x in latencies)
    return {
        "model_name": model_name,
        "model_dir": model_dir,
        "version": VALIDATION_VERSION,
        "requests_sent": len(requests),
        "requests_ok": len(latencies),
        "load_seconds": round(load_seconds, 3),
        "latency_ms": {
            "mean": statistics.fmean(latencies_ms),
            "p50": latencies_ms[len(latencies_ms) // 2],
            "p95": latencies_ms[min(len(latencies_ms) - 1, int(0.95 * len(latencies_ms)))],
            "max": latencies_ms[-1],
        },
    }


def _wait_loaded(server: ModelServer, model_name: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            statuses = server.manager.model_status(model_name, VALIDATION_VERSION)
        except Exception:
            statuses = []
        for status in statuses:
            if status.state == State.AVAILABLE:
                return
            if status.state == State.END and status.error_message:
                raise InfraValidationError(f"model failed to load: {status.error_message}")
        time.sleep(0.05)
    raise InfraValidationError(f"model {model_name} did not load within the timeout; check the server log")


def _replay(server: ModelServer, model_name: str, requests, deadline: float) -> list[float]:
    latencies = []
    with grpc.insecure_channel(
        server.grpc_address,
        options=[("grpc.max_send_message_length", server.max_message_size_bytes),
                 ("grpc.max_receive_message_length", server.max_message_size_bytes)],
    ) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for i, request in enumerate(requests):
            request.model_spec.name = model_name
            request.model_spec.ClearField("version_choice")
            start = time.monotonic()
            try:
                stub.Predict(request, timeout=max(1.0, deadline - start))
            except grpc.RpcError as e:
                raise InfraValidationError(
                    f"warmup request {i} failed over gRPC: {e.code().name}: {e.details()}"
                ) from e
            latencies.append(time.monotonic() - start)
    return latencies
