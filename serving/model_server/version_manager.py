"""Loads, warms up, serves and unloads model versions from their base paths.

Like TF Serving's file-system source plus its availability-preserving manager:
each poll lists the numbered version directories under every model's base path,
applies the version policy, loads the versions wanted, warms each one up, and
only then makes it visible to requests. Versions that fall out of the policy are
unloaded afterwards, and only once requests still using them have finished.

A version that fails to load or warm up is reported as END with its error and is
not retried until its directory changes; it never displaces a working version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Callable, Iterator

import grpc
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.model_server.config import ModelConfig, ModelServerConfig, load_model_server_config
from serving.model_server.errors import ServingError, invalid_argument, not_found
from serving.model_server.signatures import Signature
from serving.model_server.warmup_file import read_warmup_requests

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State

# How long an unload waits for in-flight requests before dropping the version anyway.
UNLOAD_DRAIN_TIMEOUT_S = 60.0

_custom_ops_lock = threading.Lock()
_custom_ops_loaded = False


def ensure_custom_ops() -> None:
    """Imports ScaNN once so its custom ops are registered before any load.

    ScaNN-indexed retrieval models use ops TF does not ship; without the import
    the load fails with "Op type not registered". Models without ScaNN load fine
    without it, so a failed import is logged and ignored.
    """
    global _custom_ops_loaded
    with _custom_ops_lock:
        if _custom_ops_loaded:
            return
        _custom_ops_loaded = True
        try:
            import scann  # noqa: F401  (registers ScaNN's TF ops)
        except Exception as e:  # ImportError, or a broken native library
            log.warning("could not import scann (%s); ScaNN-indexed models will fail to load", e)


class LoadedVersion:
    """One loaded, servable version of a model.

    Attributes:
        model_name: the model's name.
        version: the version number.
        path: the version directory.
        signatures: signature key -> Signature.
        signature_def_map: the SavedModel's SignatureDefs, for GetModelMetadata.
    """

    def __init__(self, model_name: str, version: int, path: str, module, signatures, signature_def_map):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.signatures: dict[str, Signature] = signatures
        self.signature_def_map = signature_def_map
        self._module = module  # keeps the restored variables alive
        self._in_flight = 0
        self._idle = threading.Condition()

    def acquire(self) -> None:
        with self._idle:
            self._in_flight += 1

    def release(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Blocks until no request uses this version; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def drop(self) -> None:
        """Releases the TF objects so their memory can be reclaimed."""
        self._module = None
        self.signatures = {}

    def __repr__(self) -> str:
        return f"LoadedVersion({self.model_name!r}, {self.version})"


def load_version(model_name: str, version: int, path: str) -> LoadedVersion:
    """Loads a SavedModel version directory (no warmup).

    Raises:
        Exception: whatever tf.saved_model.load raises, or ValueError when the
            SavedModel has no usable signatures.
    """
    import tensorflow as tf

    ensure_custom_ops()
    module = tf.saved_model.load(path, tags=["serve"])
    signatures = {k: Signature.from_concrete_function(k, f) for k, f in module.signatures.items()}
    if not signatures:
        raise ValueError(f"SavedModel at {path} has no signatures; export it with signatures={{...}}")
    return LoadedVersion(model_name, version, path, module, signatures, read_signature_def_map(path))


def read_signature_def_map(path: str) -> get_model_metadata_pb2.SignatureDefMap:
    """The SignatureDefs of a SavedModel's serving MetaGraph, as TF Serving reports them."""
    saved_model = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if os.path.exists(pb):
        with open(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt"), encoding="utf-8") as f:
            text_format.Parse(f.read(), saved_model)
    result = get_model_metadata_pb2.SignatureDefMap()
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            for key, sig in meta_graph.signature_def.items():
                result.signature_def[key].CopyFrom(sig)
            break
    return result


@dataclasses.dataclass
class VersionStatus:
    """What GetModelStatus reports for one version."""

    version: int
    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


class _Model:
    """Per-model bookkeeping; guarded by VersionManager._lock."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.available: dict[int, LoadedVersion] = {}
        self.status: dict[int, VersionStatus] = {}
        self.failed: dict[int, tuple] = {}  # version -> directory fingerprint when it failed
        self.base_path_error: str | None = None


def version_dirs(base_path: str) -> dict[int, str]:
    """Numbered version directories under a base path that hold a SavedModel.

    A directory without saved_model.pb(txt) is still being written (exporters copy
    files in before the graph) and is skipped until the graph appears.
    """
    result = {}
    for entry in os.scandir(base_path):
        if entry.is_dir() and entry.name.isdigit():
            if any(os.path.exists(os.path.join(entry.path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
                result[int(entry.name)] = entry.path
    return result


def aspired_versions(config: ModelConfig, on_disk: set[int]) -> set[int]:
    """Applies the model's version policy (default: the latest one)."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice") or "latest"
    if choice == "all":
        return set(on_disk)
    if choice == "specific":
        return set(policy.specific.versions) & on_disk
    num = max(1, policy.latest.num_versions) if choice == "latest" else 1
    return set(sorted(on_disk)[-num:])


def fingerprint(path: str) -> tuple:
    """Cheap change detector for a version directory (names, sizes, mtimes, two levels)."""
    items = []
    for root, dirs, files in os.walk(path):
        depth = root[len(path):].count(os.sep)
        if depth >= 2:
            dirs[:] = []
        for name in sorted(files + dirs):
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            items.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(items))


WarmupFn = Callable[[LoadedVersion, object], None]
EventFn = Callable[[str, str, int, str], None]


class VersionManager:
    """Keeps every configured model's aspired versions loaded.

    Args:
        config: the models to serve.
        warmup: runs one warmup PredictRequest against a not-yet-published
            version; the server passes its Predict code path here.
        poll_interval_s: seconds between file system polls.
        on_event: optional callback(event, model, version, detail) with event in
            {"loaded", "failed", "unloaded"}; the CLI prints these.
        metrics: optional ServerMetrics.
    """

    def __init__(self, config: ModelServerConfig, warmup: WarmupFn, poll_interval_s: float = 2.0,
                 on_event: EventFn | None = None, metrics=None):
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()  # one poll at a time (thread or reload RPC)
        self._models: dict[str, _Model] = {}
        self._warmup = warmup
        self._poll_interval_s = poll_interval_s
        self._on_event = on_event
        self._metrics = metrics
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._set_config(load_model_server_config(config))

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Starts the polling thread; the first poll runs immediately."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="version-manager", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops polling and unloads every version (after in-flight requests finish)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=UNLOAD_DRAIN_TIMEOUT_S)
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for model in models:
            for version in list(model.available):
                self._unload(model, version)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # never let a bad poll kill the manager thread
                log.exception("version poll failed; retrying in %.1fs", self._poll_interval_s)
            self._wake.wait(self._poll_interval_s)
            self._wake.clear()

    def reload_config(self, config: ModelServerConfig) -> None:
        """Replaces the served model list (HandleReloadConfigRequest).

        New models are loaded before this returns; removed models are unloaded.
        A model whose base_path changed is reloaded from the new path.
        """
        config = load_model_server_config(config)
        with self._poll_lock:
            removed = self._set_config(config)
            for model in removed:
                for version in list(model.available):
                    self._unload(model, version)
            self._poll_locked()

    def _set_config(self, config: ModelServerConfig) -> list[_Model]:
        new = {c.name: c for c in config.model_config_list.config}
        removed = []
        with self._lock:
            for name, model in list(self._models.items()):
                if name not in new or new[name].base_path != model.config.base_path:
                    removed.append(self._models.pop(name))
            for name, model_config in new.items():
                if name in self._models:
                    self._models[name].config = model_config
                else:
                    self._models[name] = _Model(model_config)
        return removed

    # -- polling -----------------------------------------------------------

    def poll_once(self) -> None:
        """Runs one poll of every model's base path (loads/unloads synchronously)."""
        with self._poll_lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            if self._stop.is_set():
                return
            self._poll_model(model)

    def _poll_model(self, model: _Model) -> None:
        name, base_path = model.config.name, model.config.base_path
        try:
            on_disk = version_dirs(base_path)
            model.base_path_error = None
        except OSError as e:
            # Keep serving what is loaded: a transiently unreadable path must not take the model down.
            if model.base_path_error is None:
                log.warning("model %s: cannot list base path %s: %s", name, base_path, e)
            model.base_path_error = f"cannot list base path {base_path}: {e.strerror or e}"
            return
        aspired = aspired_versions(model.config, set(on_disk))
        for version in list(model.failed):
            if version not in on_disk:
                del model.failed[version]  # a re-created directory gets a fresh try
        for version in sorted(aspired, reverse=True):  # newest first: it takes traffic soonest
            if self._stop.is_set():
                return
            if version in model.available:
                continue
            print_fp = fingerprint(on_disk[version])
            if model.failed.get(version) == print_fp:
                continue
            self._load(model, version, on_disk[version], print_fp)
        # Unload what the policy no longer wants, but only once something it wants
        # is serving: a failed new version must never leave the model with nothing.
        with self._lock:
            loaded_aspired = [v for v in model.available if v in aspired]
            extra = sorted(v for v in model.available if v not in aspired)
            if not loaded_aspired and extra:
                extra = extra[:-1]  # keep the newest working version as the fallback
        for version in extra:
            self._unload(model, version)

    def _load(self, model: _Model, version: int, path: str, print_fp: tuple) -> None:
        name = model.config.name
        with self._lock:
            model.status[version] = VersionStatus(version, State.LOADING)
        start = time.monotonic()
        loaded = None
        try:
            loaded = load_version(name, version, path)
            warmup_requests = read_warmup_requests(path)
            for request in warmup_requests:
                self._warmup(loaded, request)
        except Exception as e:
            stage = "warm up" if loaded is not None else "load"
            code = e.code if isinstance(e, ServingError) else grpc.StatusCode.UNKNOWN
            message = f"failed to {stage} version {version} of model {name} from {path}: {e}"
            log.error("%s", message)
            if loaded is not None:
                loaded.drop()
            with self._lock:
                model.status[version] = VersionStatus(version, State.END, code, message)
                model.failed[version] = print_fp
            if self._metrics:
                self._metrics.model_loads.labels(name, "failure").inc()
            self._emit("failed", name, version, message)
            return
        with self._lock:
            # The switch: from here on, requests without a version get the newest available.
            model.available[version] = loaded
            model.status[version] = VersionStatus(version, State.AVAILABLE)
            model.failed.pop(version, None)
        seconds = time.monotonic() - start
        log.info("model %s: version %d available (%.2fs, %d warmup requests)", name, version, seconds, len(warmup_requests))
        if self._metrics:
            self._metrics.model_loads.labels(name, "success").inc()
            self._metrics.loaded_versions.labels(name).set(len(model.available))
        self._emit("loaded", name, version, path)

    def _unload(self, model: _Model, version: int) -> None:
        name = model.config.name
        with self._lock:
            loaded = model.available.pop(version, None)
            if loaded is None:
                return
            model.status[version] = VersionStatus(version, State.UNLOADING)
        # Requests that leased this version before it left `available` finish first.
        if not loaded.wait_idle(UNLOAD_DRAIN_TIMEOUT_S):
            log.warning("model %s version %d: requests still running after %.0fs; unloading anyway",
                        name, version, UNLOAD_DRAIN_TIMEOUT_S)
        loaded.drop()
        with self._lock:
            model.status[version] = VersionStatus(version, State.END)
        if self._metrics:
            self._metrics.loaded_versions.labels(name).set(len(model.available))
        log.info("model %s: version %d unloaded", name, version)
        self._emit("unloaded", name, version, "")

    def _emit(self, event: str, name: str, version: int, detail: str) -> None:
        if self._on_event:
            try:
                self._on_event(event, name, version, detail)
            except Exception:
                log.exception("version event callback failed")

    # -- lookups -----------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, name: str, version: int | None = None, label: str | None = None) -> Iterator[LoadedVersion]:
        """Yields the version to serve, keeping it loaded until the block exits.

        Args:
            name: model name.
            version: a specific version, or None for the latest available.
            label: a version label from the config (instead of `version`).

        Raises:
            ServingError: NOT_FOUND for an unknown model or version,
                INVALID_ARGUMENT for an unknown label (TF Serving's codes).
        """
        with self._lock:
            loaded = self._resolve(name, version, label)
            loaded.acquire()
        try:
            yield loaded
        finally:
            loaded.release()

    def _resolve(self, name: str, version: int | None, label: str | None) -> LoadedVersion:
        model = self._models.get(name)
        if model is None:
            raise not_found(f"Servable not found for request: Latest({name}); no model named {name!r} is configured")
        if label:
            if label not in model.config.version_labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.config.version_labels[label]
        if version is None:
            if not model.available:
                raise not_found(
                    f"Servable not found for request: Latest({name}); no version of {name!r} is loaded yet, "
                    f"check GetModelStatus and the base path {model.config.base_path}"
                )
            return model.available[max(model.available)]
        loaded = model.available.get(version)
        if loaded is None:
            loaded_list = sorted(model.available) or "none"
            raise not_found(
                f"Servable not found for request: Specific({name}, {version}); loaded versions: {loaded_list}"
            )
        return loaded

    def model_status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """Version statuses for GetModelStatus, sorted by version.

        Raises:
            ServingError: NOT_FOUND for an unknown model/version, INVALID_ARGUMENT for
                an unknown label.
        """
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.status:
                raise not_found(f"Could not find any versions of model {name}")
            if label:
                if label not in model.config.version_labels:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
                version = model.config.version_labels[label]
            if version is not None:
                if version not in model.status:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [dataclasses.replace(model.status[version])]
            return [dataclasses.replace(s) for _, s in sorted(model.status.items())]

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def is_configured(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def available_versions(self) -> dict[str, list[int]]:
        """Model name -> versions currently serving."""
        with self._lock:
            return {name: sorted(m.available) for name, m in self._models.items()}

    def health(self) -> tuple[bool, str]:
        """(True, "") when every model has a servable version, else (False, reason)."""
        problems = []
        with self._lock:
            for name, model in sorted(self._models.items()):
                if model.available:
                    continue
                failures = [s.error_message for s in model.status.values() if s.error_message]
                if model.base_path_error:
                    why = model.base_path_error
                elif failures:
                    why = failures[-1]
                elif any(s.state == State.LOADING for s in model.status.values()):
                    why = "loading"
                else:
                    why = f"no version directories under {model.config.base_path}"
                problems.append(f"model {name}: no servable version ({why})")
        return (not problems, "; ".join(problems))
