"""ModelServer: the embedded, TF-Serving-compatible model server.

Wires the version manager, the Predict path (optionally batched), request
logging, the gRPC services, the REST API and the Prometheus endpoint together,
with optional TLS and bearer token on gRPC and REST. Ports given as 0 are picked
by the OS and exposed as attributes after `start()`; None disables that endpoint.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.server
import logging
import os
import threading
import time

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.model_server.auth import AdminPolicy, TokenAuth, TokenInterceptor
from serving.model_server.batching import Batcher
from serving.model_server.config import (
    BatchingOptions, ModelServerConfig, RequestLoggingOptions, load_model_server_config)
from serving.model_server.grpc_service import ModelService, PredictionService, WorkerInterceptor
from serving.model_server.limits import RequestLimits
from serving.model_server.metrics import ServerMetrics
from serving.model_server.predictor import Predictor
from serving.model_server.reload import ConfigReloader
from serving.model_server.request_logger import RequestLogger
from serving.model_server.rest import RestApi
from serving.model_server.tls import TlsOptions
from serving.model_server.version_manager import EventFn, VersionManager

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ModelServer:
    """A model server speaking TF Serving's gRPC and REST APIs.

    Args:
        model_config: a ModelServerConfig or the path of a text-format one.
        grpc_port: gRPC port (0: any free port; None: no gRPC).
        rest_port: REST port (0: any free port; None: no REST).
        metrics_port: Prometheus port (0: any free port; None: no metrics endpoint).
        host: address every endpoint binds; loopback by default.
        poll_interval_s: seconds between version polls of the base paths.
        batching: BatchingOptions to turn on server-side batching; None: off.
        max_message_size_bytes: gRPC send/receive and REST body limit.
        max_request_batch_size: most rows one request may carry; defaults to
            batching.max_batch_size when batching is on, else unlimited.
        grpc_max_workers: gRPC handler threads.
        on_version_event: callback(event, model, version, detail) for
            "loaded"/"failed"/"unloaded" versions.
        request_logging: server-wide request logging settings (default
            directory, rotation, queue); models' logging_config apply regardless.
        tls: TlsOptions to serve gRPC and REST over TLS only; None: plaintext.
        auth_token: when given, gRPC and REST calls (except GET /healthz) need
            `authorization: Bearer <auth_token>`; see auth.read_token_file.
        limits: per-request rows / elements / response-size limits (limits.py).
        admin_token: the credential HandleReloadConfigRequest needs; None:
            reloads only when `host` is loopback (auth.AdminPolicy).
        rest_timeout_s: REST read/idle timeout and request deadline (None: none).
        rest_max_connections: REST connections served at once (None: no cap).
        metrics_path: also serve Prometheus metrics on the REST port at this path.
        allow_version_labels_for_unavailable_models: TF Serving's flag, for reloads.
        worker_index: set by the command line's multi-process mode (--num_workers
            N > 1; see supervisor.py) in each worker process: the gRPC and REST
            ports are bound with SO_REUSEPORT (shared with the other workers),
            answers carry `x-model-server-worker: <i>` (gRPC trailing metadata,
            REST header), request log files are named `<prefix>-w<i>-...`, and
            HandleReloadConfigRequest is refused (it would reach one worker only).
            None (the default): a standalone server, ports exclusive.

    Raises:
        ConfigError: an invalid config, or a request log directory that cannot be written.

    Example:
        with ModelServer("serving/models.config") as server:  # returns once the models loaded
            server.wait_until_available(0)  # raises with the reason when one failed
            print(server.grpc_port)
    """

    def __init__(self, model_config: ModelServerConfig | str | os.PathLike, grpc_port: int | None = 0,
                 rest_port: int | None = 0, metrics_port: int | None = 0, host: str = "127.0.0.1",
                 poll_interval_s: float = 2.0, batching: BatchingOptions | None = None,
                 max_message_size_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_request_batch_size: int | None = None, grpc_max_workers: int = 16,
                 on_version_event: EventFn | None = None, request_logging: RequestLoggingOptions | None = None,
                 tls: TlsOptions | None = None, auth_token: str | None = None,
                 limits: RequestLimits | None = None, admin_token: str | None = None,
                 rest_timeout_s: float | None = 30.0, rest_max_connections: int | None = None,
                 metrics_path: str | None = None, allow_version_labels_for_unavailable_models: bool = False,
                 worker_index: int | None = None):
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be > 0")
        self.worker_index = worker_index
        if worker_index is not None:
            request_logging = dataclasses.replace(request_logging or RequestLoggingOptions(), worker_index=worker_index)
        self.config = load_model_server_config(model_config)
        self.host = host
        self.grpc_port, self.rest_port, self.metrics_port = grpc_port, rest_port, metrics_port
        self.max_message_size_bytes = max_message_size_bytes
        self.batching = batching
        self.tls = tls
        self.metrics = ServerMetrics()
        self._auth = TokenAuth(auth_token) if auth_token is not None else None
        self.request_logger = RequestLogger(request_logging or RequestLoggingOptions(), self.metrics)
        self.request_logger.configure(self.config)
        self._grpc_max_workers = grpc_max_workers
        self._batcher: Batcher | None = None
        self._predictor: Predictor | None = None
        self.manager = VersionManager(
            self.config,
            warmup=lambda version, request: self._predictor.predict_on_version(version, request),
            poll_interval_s=poll_interval_s,
            on_event=on_version_event,
            metrics=self.metrics,
        )
        if max_request_batch_size is None and batching is not None:
            max_request_batch_size = batching.max_batch_size
        self._max_request_batch_size = max_request_batch_size
        self.limits = limits if limits is not None else RequestLimits()
        self._admin = AdminPolicy(admin_token, host)
        self.reloader = ConfigReloader(self.manager, self.request_logger, self.config,
                                       allow_version_labels_for_unavailable_models)
        self._rest_options = {"timeout_s": rest_timeout_s, "max_connections": rest_max_connections,
                              "metrics_path": metrics_path}
        self._grpc_server: grpc.Server | None = None
        self._http_server: http.server.ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._started = False

    @property
    def batcher(self) -> Batcher | None:
        """The Batcher when batching is on (for inspection)."""
        return self._batcher

    @property
    def grpc_address(self) -> str:
        """host:port for grpc.insecure_channel."""
        return _grpc_address(self.host, self.grpc_port)

    @property
    def rest_url(self) -> str:
        """Base URL of the REST API (https:// with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.rest_port}"

    def start(self) -> "ModelServer":
        """Loads every configured model, then binds gRPC and REST and starts polling.

        As TF Serving does, the gRPC and REST ports open only after the initial load
        finished (each model's versions loaded, or failed and reported in
        GetModelStatus and /healthz), so a client that reaches the port never gets
        NOT_FOUND for a model that is merely still loading. The metrics port opens
        first, so a slow initial load can be watched.

        Raises:
            OSError: a port cannot be bound; pick another or free it.
        """
        if self._started:
            raise RuntimeError("ModelServer already started")
        self._started = True
        try:
            if self.batching is not None:
                self._batcher = Batcher(self.batching, self.metrics)
            self.request_logger.start()
            self._predictor = Predictor(self.manager, self._batcher, self._max_request_batch_size,
                                        self.request_logger, self.limits)
            if self.metrics_port is not None:
                self.metrics_port = self.metrics.serve(self.host, self.metrics_port)
            self.manager.initial_load()
            if self.grpc_port is not None:
                self._start_grpc()
            if self.rest_port is not None:
                api = RestApi(self._predictor, self.metrics, self.max_message_size_bytes, self._auth,
                              **self._rest_options)
                self._http_server = api.make_server(self.host, self.rest_port,
                                                    self.tls.ssl_context() if self.tls else None,
                                                    worker_index=self.worker_index)
                self.rest_port = self._http_server.server_address[1]
                self._http_thread = threading.Thread(target=self._http_server.serve_forever,
                                                     name="rest-api", daemon=True)
                self._http_thread.start()
            self.manager.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_grpc(self) -> None:
        options = [
            ("grpc.max_receive_message_length", self.max_message_size_bytes),
            ("grpc.max_send_message_length", self.max_message_size_bytes),
            # Without this, Linux lets a second server share the port silently; the workers of a
            # multi-process server share it on purpose.
            ("grpc.so_reuseport", 0 if self.worker_index is None else 1),
        ]
        interceptors = [TokenInterceptor(self._auth, self.metrics, self._admin)] if self._auth else []
        reload_refusal = None
        if self.worker_index is not None:
            interceptors.insert(0, WorkerInterceptor(self.worker_index))
            reload_refusal = ("HandleReloadConfigRequest is refused with --num_workers > 1: it would reach one "
                              "worker only; edit the config file with --model_config_file_poll_wait_seconds on")
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self._grpc_max_workers, thread_name_prefix="grpc"),
            options=options,
            interceptors=interceptors or None,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self._predictor, self.metrics), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(self.manager, self.metrics, self.reloader, self._admin, reload_refusal), server)
        address = _grpc_address(self.host, self.grpc_port)
        try:
            if self.tls is not None:
                port = server.add_secure_port(address, self.tls.grpc_credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot bind gRPC on {address}: {e}; choose another --port") from e
        if port == 0:
            raise OSError(f"cannot bind gRPC on {address}; choose another --port")
        self.grpc_port = port
        server.start()
        self._grpc_server = server

    def wait_until_available(self, timeout: float = 60.0) -> None:
        """Blocks until every configured model serves at least one version.

        Raises:
            TimeoutError: with the reason (load error, missing directory) per model.
        """
        deadline = time.monotonic() + timeout
        while True:
            ok, reason = self.manager.health()
            if ok:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"models not available after {timeout:.0f}s: {reason}")
            time.sleep(0.05)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stops accepting requests, lets in-flight ones finish, closes the request logs, unloads models."""
        if self._grpc_server is not None:
            self._grpc_server.stop(grace_s).wait()
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._batcher is not None:
            self._batcher.stop()
        self.request_logger.close()
        self.metrics.shutdown()
        self.manager.stop()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
