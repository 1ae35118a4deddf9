"""Loads, warms up, serves and unloads model versions from their base paths.

Like TF Serving's file-system source plus its availability-preserving manager:
each poll lists the numbered version directories under every model's base path,
applies the version policy, loads the versions wanted, warms each one up, and
only then makes it visible to requests. Versions that fall out of the policy are
unloaded afterwards, and only once requests still using them have finished.

Only complete version directories are considered (version_files.py: the graph,
the variables index and all its shards, the assets the graph references); one
still being written is skipped with a log line and re-checked on every poll. A
loaded version whose directory listing changes (or whose model moved to another
base path) is loaded again, and the new copy replaces the old only once it
serves. A version that fails to load or warm up is reported as END with its
error and is not retried until its directory changes; it never displaces a
working version.
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
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.model_server.config import ModelConfig, ModelServerConfig, load_model_server_config
from serving.model_server.errors import ServingError, invalid_argument, not_found
from serving.model_server.signatures import Signature
from serving.model_server.version_files import fingerprint, incomplete_reason, read_saved_model, version_dirs
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
        source: (absolute directory, fingerprint) of the copy loaded; a poll that
            finds another reloads the version (new copy first, then the old dropped).
        signatures: signature key -> Signature.
        signature_def_map: the SavedModel's SignatureDefs, for GetModelMetadata.
    """

    def __init__(self, model_name: str, version: int, path: str, module, signatures, signature_def_map):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.source: tuple[str, tuple] = (os.path.abspath(path), ())  # (directory, fingerprint) loaded from
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
    saved_model = read_saved_model(path)
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
        # version -> (directory, fingerprint) of a copy that failed to load or warm up:
        # not retried until the directory or its listing changes.
        self.failed: dict[int, tuple[str, tuple]] = {}
        # version -> why its directory is not loadable yet (still being written).
        self.incomplete: dict[int, str] = {}
        # directory -> (fingerprint, incomplete_reason) so a SavedModel is parsed once per change.
        self.checked: dict[str, tuple[tuple, str | None]] = {}
        self.base_path_error: str | None = None


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
        self._initial_load_done = threading.Event()
        self._removed: dict[str, dict[int, VersionStatus]] = {}  # removed model -> its versions, END
        self._set_config(load_model_server_config(config))

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Starts the polling thread; its first poll runs immediately."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="version-manager", daemon=True)
            self._thread.start()

    def initial_load(self) -> None:
        """Runs the first poll synchronously: every configured model's aspired versions
        are loaded (or have failed) when this returns. The server opens its ports after
        it, as TF Serving does, so a client never sees NOT_FOUND for a model that is
        merely still loading."""
        try:
            self.poll_once()
        except Exception:  # reported like any poll's; the poll thread retries
            log.exception("initial version poll failed; retrying every %.1fs", self._poll_interval_s)
        finally:
            self._initial_load_done.set()

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
            self._initial_load_done.set()
            self._wake.wait(self._poll_interval_s)
            self._wake.clear()

    def reload_config(self, config: ModelServerConfig) -> None:
        """Replaces the served model list (HandleReloadConfigRequest).

        New models are loaded before this returns; removed models are unloaded and
        their versions then report END. A model whose base_path changed keeps
        serving its loaded versions until the new path has a version loaded (each
        version from the new path is loaded before the old copy is dropped); a new
        path that is missing or holds no complete version leaves the old serving.
        """
        config = load_model_server_config(config)
        with self._poll_lock:
            removed = self._set_config(config)
            for model in removed:
                for version in list(model.available):
                    self._unload(model, version)
                with self._lock:
                    self._removed[model.config.name] = {
                        v: dataclasses.replace(s, state=State.END) for v, s in model.status.items()}
            self._poll_locked()

    def _set_config(self, config: ModelServerConfig) -> list[_Model]:
        new = {c.name: c for c in config.model_config_list.config}
        removed = []
        with self._lock:
            for name, model in list(self._models.items()):
                if name not in new:
                    removed.append(self._models.pop(name))
            for name, model_config in new.items():
                self._removed.pop(name, None)
                if name in self._models:
                    model = self._models[name]
                    if model_config.base_path != model.config.base_path:
                        log.info("model %s: base path %s -> %s; serving the loaded versions until the new path "
                                 "has one loaded", name, model.config.base_path, model_config.base_path)
                        model.failed.clear()
                        model.incomplete.clear()
                        model.checked.clear()
                        model.base_path_error = None
                    model.config = model_config
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

    def _complete_versions(self, model: _Model, on_disk: dict[int, str]) -> dict[int, tuple[str, tuple]]:
        """version -> (directory, fingerprint) of the complete ones; logs each incomplete one once per change."""
        complete, incomplete = {}, {}
        for version, path in on_disk.items():
            print_fp = fingerprint(path)
            cached = model.checked.get(path)
            if cached is not None and cached[0] == print_fp:
                reason = cached[1]
            else:
                reason = incomplete_reason(path)
                model.checked[path] = (print_fp, reason)
                if reason is not None and reason != model.incomplete.get(version):
                    log.warning("model %s: version %d at %s is incomplete (%s); not loading it, re-checking on "
                                "the next poll", model.config.name, version, path, reason)
            if reason is None:
                complete[version] = (path, print_fp)
            else:
                incomplete[version] = reason
        for path in set(model.checked) - set(on_disk.values()):
            del model.checked[path]
        with self._lock:
            model.incomplete = incomplete
        return complete

    def _poll_model(self, model: _Model) -> None:
        name, base_path = model.config.name, model.config.base_path
        try:
            on_disk = version_dirs(base_path)
        except OSError as e:
            # Keep serving what is loaded: an unreadable or missing path (a transient
            # error, or a reload to a wrong path) must not take the model down.
            if model.base_path_error is None:
                kept = sorted(model.available)
                log.warning("model %s: cannot list base path %s: %s%s", name, base_path, e,
                            f"; still serving version(s) {kept}" if kept else "")
            model.base_path_error = f"cannot list base path {base_path}: {e.strerror or e}"
            return
        model.base_path_error = None
        complete = self._complete_versions(model, on_disk)
        # The policy sees complete versions only: a version still being copied is not
        # there yet, so the previous one stays aspired and serving meanwhile.
        aspired = aspired_versions(model.config, set(complete))
        for version in list(model.failed):
            if version not in complete:
                del model.failed[version]  # a re-created directory gets a fresh try
        for version in sorted(aspired, reverse=True):  # newest first: it takes traffic soonest
            if self._stop.is_set():
                return
            path, print_fp = complete[version]
            loaded = model.available.get(version)
            if loaded is not None and loaded.source == (os.path.abspath(path), print_fp):
                continue
            if model.failed.get(version) == (path, print_fp):
                continue
            if loaded is not None:
                # Same version, another copy (a new base path, or files changed in place):
                # load the new copy first, then drop the old one.
                log.info("model %s: version %d changed on disk (%s); reloading it", name, version, path)
            self._load(model, version, path, print_fp, replacing=loaded)
        # Unload what the policy no longer wants, but only once something it wants
        # is serving: a failed new version must never leave the model with nothing.
        with self._lock:
            loaded_aspired = [v for v in model.available if v in aspired]
            extra = sorted(v for v in model.available if v not in aspired)
            if not loaded_aspired and extra:
                extra = extra[:-1]  # keep the newest working version as the fallback
        for version in extra:
            self._unload(model, version)

    def _load(self, model: _Model, version: int, path: str, print_fp: tuple,
              replacing: LoadedVersion | None = None) -> None:
        name = model.config.name
        if replacing is None:
            with self._lock:
                model.status[version] = VersionStatus(version, State.LOADING)
        start = time.monotonic()
        loaded = None
        try:
            loaded = load_version(name, version, path)
            loaded.source = (os.path.abspath(path), print_fp)
            warmup_requests = read_warmup_requests(path)
            for request in warmup_requests:
                self._warmup(loaded, request)
        except Exception as e:
            stage = "warm up" if loaded is not None else "load"
            code = e.code if isinstance(e, ServingError) else grpc.StatusCode.UNKNOWN
            message = f"failed to {stage} version {version} of model {name} from {path}: {e}"
            if loaded is not None:
                loaded.drop()
            with self._lock:
                model.failed[version] = (path, print_fp)
                if replacing is None:
                    model.status[version] = VersionStatus(version, State.END, code, message)
            if replacing is not None:
                message += f"; the copy from {replacing.path} keeps serving"
            log.error("%s", message)
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
        log.info("model %s: version %d available from %s (%.2fs, %d warmup requests)",
                 name, version, path, seconds, len(warmup_requests))
        if self._metrics:
            self._metrics.model_loads.labels(name, "success").inc()
            self._metrics.loaded_versions.labels(name).set(len(model.available))
        if replacing is not None:
            self._drain_and_drop(replacing)
            log.info("model %s: previous copy of version %d (%s) unloaded", name, version, replacing.path)
        self._emit("loaded", name, version, path)

    def _drain_and_drop(self, loaded: LoadedVersion) -> None:
        # Requests that leased this version before it left `available` finish first.
        if not loaded.wait_idle(UNLOAD_DRAIN_TIMEOUT_S):
            log.warning("model %s version %d: requests still running after %.0fs; unloading anyway",
                        loaded.model_name, loaded.version, UNLOAD_DRAIN_TIMEOUT_S)
        loaded.drop()

    def _unload(self, model: _Model, version: int) -> None:
        name = model.config.name
        with self._lock:
            loaded = model.available.pop(version, None)
            if loaded is None:
                return
            model.status[version] = VersionStatus(version, State.UNLOADING)
        self._drain_and_drop(loaded)
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
        """Version statuses for GetModelStatus, newest version first (TF Serving's order).

        As in TF Serving, a version label is ignored (every version is reported), and
        a model removed by a config reload reports its versions in state END.

        Raises:
            ServingError: NOT_FOUND for an unknown model or version.
        """
        del label  # TF Serving's GetModelStatus reads model_spec.version only
        with self._lock:
            model = self._models.get(name)
            statuses = model.status if model is not None else self._removed.get(name, {})
            if not statuses:
                raise not_found(f"Could not find any versions of model {name}")
            if version is not None:
                if version not in statuses:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [dataclasses.replace(statuses[version])]
            return [dataclasses.replace(s) for _, s in sorted(statuses.items(), reverse=True)]

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
        """(True, "") when the initial load finished and every model has a servable
        version, else (False, reason)."""
        if not self._initial_load_done.is_set():
            return False, "initial model load in progress"
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
                elif model.incomplete:
                    why = "; ".join(f"version {v} incomplete: {r}" for v, r in sorted(model.incomplete.items()))
                else:
                    why = f"no version directories under {model.config.base_path}"
                problems.append(f"model {name}: no servable version ({why})")
        return (not problems, "; ".join(problems))
