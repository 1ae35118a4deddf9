"""Request logging, like TF Serving's logging_config: sampled Predict calls to TFRecord files.

Which models are logged comes from each model's `logging_config` in the model
config (or, for models without one, `RequestLoggingOptions.default_dir`). For a
logged model, every successful Predict call (gRPC and REST) is sampled with the
model's `sampling_rate`; a sampled call is put on a bounded queue without
waiting, and one background thread turns it into a `PredictionLog` and writes it
to the model's current file (names and the reader: request_log.py). Files are
closed (renamed from `.partial`) when they reach `max_file_bytes`,
`max_file_records` or `max_file_age_s`, and on shutdown.

Logging never blocks or fails a request: when the queue is full the record is
dropped, and a failed write is logged; both are counted in
`recsys_model_server_request_log_records_total{model, outcome}` with outcome
logged / dropped / failed. Failed requests are not logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import random
import threading
import time
from collections.abc import Callable

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
from tensorflow_serving.config import logging_config_pb2

from serving.model_server.config import ConfigError, ModelServerConfig, RequestLoggingOptions
from serving.model_server.metrics import ServerMetrics
from serving.model_server.request_log import PARTIAL_SUFFIX, SUFFIX, log_file_name

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 1.0  # how often open files are flushed and checked for age
ERROR_LOG_INTERVAL_S = 60.0  # write errors are logged at most this often per file prefix
_TFRECORD_FRAMING_BYTES = 16  # length (8) + its CRC (4) + data CRC (4)

BuildFn = Callable[[], tuple[predict_pb2.PredictRequest, predict_pb2.PredictResponse]]


@dataclasses.dataclass(frozen=True)
class _Target:
    """Where and how often one model is logged."""

    prefix: str
    sampling_config: logging_config_pb2.SamplingConfig


@dataclasses.dataclass(frozen=True)
class _Record:
    model: str
    version: int
    signature: str
    request_time: float
    target: _Target
    build: BuildFn  # runs on the writer thread, so requests do not pay for copies


class _LogFile:
    """One TFRecord file, written as `<path>.partial` and renamed to `<path>` by close()."""

    def __init__(self, path: str):
        self.path = path
        self.partial_path = path + PARTIAL_SUFFIX
        self.opened = time.monotonic()
        self.bytes = self.records = 0
        self._writer = tf.io.TFRecordWriter(self.partial_path)

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        self.bytes += len(data) + _TFRECORD_FRAMING_BYTES
        self.records += 1

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        os.rename(self.partial_path, self.path)


class RequestLogger:
    """Samples Predict calls per model and writes them on a background thread.

    Args:
        options: server-wide settings (default directory, rotation, queue size).
        metrics: where logged / dropped / failed records are counted.

    Call `configure(config)` with the model config (again on every reload),
    `start()`, then `log_predict(...)` per successful Predict; `close()` writes
    what is queued and closes every file.
    """

    def __init__(self, options: RequestLoggingOptions, metrics: ServerMetrics):
        self.options = options
        self._metrics = metrics
        self._targets: dict[str, _Target] = {}  # replaced whole by configure(), read without a lock
        # Directories log files may go under (realpaths); None until the first configure()
        # when options.allowed_dirs is not given: then the startup config's own directories.
        self._allowed_dirs: tuple[str, ...] | None = (
            tuple(os.path.realpath(d) for d in options.allowed_dirs) if options.allowed_dirs is not None else None)
        self._queue: queue.Queue[_Record | None] = queue.Queue(maxsize=options.queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Writer-thread state.
        self._files: dict[str, _LogFile] = {}
        self._next_seq: dict[str, int] = {}
        self._last_error_log: dict[str, float] = {}

    # -- configuration and lifecycle ------------------------------------------

    def configure(self, config: ModelServerConfig) -> None:
        """Takes the logging settings of a validated config; creates the log directories.

        Raises:
            ConfigError: a log directory cannot be created or written, or two
                models would log to the same prefix.
        """
        targets: dict[str, _Target] = {}
        prefixes = self._prefixes(config)
        if self._allowed_dirs is None:  # the startup config (from the operator's file) is trusted
            self._allowed_dirs = tuple(sorted({os.path.realpath(os.path.dirname(p)) for p in prefixes.values()}))
        for name, prefix in sorted(prefixes.items()):
            self._check_allowed(name, prefix)
        for model in config.model_config_list.config:
            if model.HasField("logging_config"):
                prefix = model.logging_config.log_collector_config.filename_prefix
                sampling = logging_config_pb2.SamplingConfig()
                sampling.CopyFrom(model.logging_config.sampling_config)
                if sampling.sampling_rate == 0:
                    log.warning("model %s: logging_config has sampling_rate 0 (or none); nothing is logged", model.name)
                    continue
            elif self.options.default_dir is not None:
                prefix = os.path.join(self.options.default_dir, model.name)
                sampling = logging_config_pb2.SamplingConfig(sampling_rate=self.options.default_sampling_rate)
                if sampling.sampling_rate == 0:
                    continue
            else:
                continue
            _ensure_writable_dir(os.path.dirname(prefix), model.name)
            if prefix in {t.prefix for t in targets.values()}:
                raise ConfigError(f"model {model.name}: another model already logs to {prefix!r}")
            targets[model.name] = _Target(prefix, sampling)
        for name, target in sorted(targets.items()):
            if self._targets.get(name) != target:
                log.info("request logging: %g of model %s's Predict calls -> %s-*%s",
                         target.sampling_config.sampling_rate, name, target.prefix, SUFFIX)
        self._targets = targets

    def _prefixes(self, config: ModelServerConfig) -> dict[str, str]:
        """{model: log file prefix} the config asks for (sampling aside)."""
        out = {}
        for model in config.model_config_list.config:
            if model.HasField("logging_config"):
                out[model.name] = model.logging_config.log_collector_config.filename_prefix
            elif self.options.default_dir is not None:
                out[model.name] = os.path.join(self.options.default_dir, model.name)
        return out

    def _check_allowed(self, model: str, prefix: str) -> None:
        """ConfigError unless the prefix's directory is under an allowed directory (symlinks resolved)."""
        directory = os.path.realpath(os.path.dirname(prefix))
        for root in self._allowed_dirs or ():
            if os.path.commonpath([root, directory]) == root:
                return
        allowed = ", ".join(self._allowed_dirs) if self._allowed_dirs else "none"
        raise ConfigError(
            f"model {model}: request log prefix {prefix!r} is outside the allowed log directories ({allowed}); "
            "start the server with --request_log_allowed_dirs listing its directory")

    def targets(self) -> dict[str, tuple[str, float]]:
        """{model: (filename prefix, sampling rate)} for every logged model."""
        return {name: (t.prefix, t.sampling_config.sampling_rate) for name, t in sorted(self._targets.items())}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stops sampling, writes every queued record, closes (renames) every file."""
        self._targets = {}
        self._stop.set()
        try:
            self._queue.put_nowait(None)  # wakes the writer; when full it is busy anyway
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("request log writer did not finish within %.0fs; %d queued record(s) may be lost",
                          timeout_s, self._queue.qsize())
                return
        self._drop_queued()

    # -- request side -----------------------------------------------------------

    def log_predict(self, model: str, version: int, signature: str, request_time: float, build: BuildFn) -> None:
        """Samples one successful Predict call and queues it; never blocks, never raises.

        Args:
            model, version, signature: what served the call (the version actually used).
            request_time: when the request arrived (unix seconds).
            build: returns (PredictRequest, PredictResponse); called later on the
                writer thread, so it must only read objects nothing else changes.
        """
        target = self._targets.get(model)
        if target is None or random.random() >= target.sampling_config.sampling_rate:
            return
        try:
            self._queue.put_nowait(_Record(model, version, signature, request_time, target, build))
        except queue.Full:
            self._metrics.request_logs.labels(model, "dropped").inc()

    # -- writer thread ----------------------------------------------------------

    def _run(self) -> None:
        next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                record = self._queue.get(timeout=HOUSEKEEPING_S)
            except queue.Empty:
                record = None
            if record is not None:
                self._write(record)
            if time.monotonic() >= next_housekeeping:
                self._housekeeping()
                next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        for prefix in list(self._files):
            self._close_file(prefix)

    def _write(self, record: _Record) -> None:
        prefix = record.target.prefix
        try:
            request, response = record.build()
            entry = prediction_log_pb2.PredictionLog()
            metadata = entry.log_metadata
            metadata.model_spec.name = record.model
            metadata.model_spec.version.value = record.version
            metadata.model_spec.signature_name = record.signature
            metadata.sampling_config.CopyFrom(record.target.sampling_config)
            metadata.timestamp_secs = int(record.request_time)
            entry.predict_log.request.CopyFrom(request)
            entry.predict_log.response.CopyFrom(response)
            data = entry.SerializeToString()
            file = self._files.get(prefix) or self._open_file(prefix)
            file.write(data)
        except Exception as e:  # a logging problem must never reach requests or kill the writer
            self._metrics.request_logs.labels(record.model, "failed").inc()
            self._report_error(prefix, f"cannot write a request log record: {type(e).__name__}: {e}")
            if prefix in self._files:
                self._close_file(prefix)  # start a fresh file on the next record
            return
        self._metrics.request_logs.labels(record.model, "logged").inc()
        if file.bytes >= self.options.max_file_bytes or file.records >= self.options.max_file_records:
            self._close_file(prefix)

    def _open_file(self, prefix: str) -> _LogFile:
        seq = self._next_seq.get(prefix, 0)
        now = time.time()
        worker = self.options.worker_index
        path = log_file_name(prefix, now, seq, worker)
        while os.path.exists(path) or os.path.exists(path + PARTIAL_SUFFIX):  # e.g. a restart within a second
            seq += 1
            path = log_file_name(prefix, now, seq, worker)
        self._next_seq[prefix] = seq + 1
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._files[prefix] = file = _LogFile(path)
        return file

    def _close_file(self, prefix: str) -> None:
        file = self._files.pop(prefix)
        try:
            file.close()
        except Exception as e:
            self._report_error(prefix, f"cannot close {file.partial_path}: {type(e).__name__}: {e}")

    def _housekeeping(self) -> None:
        """Closes files older than max_file_age_s or no longer configured (a reload); flushes the others."""
        configured = {t.prefix for t in self._targets.values()}
        for prefix, file in list(self._files.items()):
            dropped_by_reload = prefix not in configured and not self._stop.is_set()  # close() empties _targets
            if time.monotonic() - file.opened >= self.options.max_file_age_s or dropped_by_reload:
                self._close_file(prefix)
                continue
            try:
                file.flush()
            except Exception as e:
                self._report_error(prefix, f"cannot flush {file.partial_path}: {type(e).__name__}: {e}")

    def _report_error(self, prefix: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log.get(prefix, -math.inf) >= ERROR_LOG_INTERVAL_S:
            self._last_error_log[prefix] = now
            log.error("request log %s-*%s: %s (counted as outcome=\"failed\"; logged at most once a minute)",
                      prefix, SUFFIX, message)

    def _drop_queued(self) -> None:
        """Counts records queued after the writer stopped (a request that raced shutdown)."""
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                return
            if record is not None:
                self._metrics.request_logs.labels(record.model, "dropped").inc()


def _ensure_writable_dir(directory: str, model: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"model {model}: cannot create request log directory {directory!r}: {e}") from e
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"model {model}: request log directory {directory!r} is not writable by this user")
