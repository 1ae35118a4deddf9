"""Applying a new ModelServerConfig at runtime: HandleReloadConfigRequest and
--model_config_file_poll_wait_seconds share this path.

Checks TF Serving makes before it changes anything (server_core.cc), with its
codes and words, then the request-log paths (request_logger.py confines them),
then hands the config to the version manager:

* every model names its platform (`model_platform: "tensorflow"`) and an
  absolute base_path: INVALID_ARGUMENT (ValidateModelConfigList, GetPlatform);
* every version label points at a version that is AVAILABLE now:
  FAILED_PRECONDITION (UpdateModelVersionLabelMap), unless
  --allow_version_labels_for_unavailable_models, which then still refuses to
  move an existing label to an unavailable version (TF Serving's rule).
"""

from __future__ import annotations

import logging
import os
import threading

import grpc
from google.protobuf import text_format

from serving.model_server.config import ConfigError, ModelServerConfig, load_model_server_config
from serving.model_server.errors import ServingError, invalid_argument
from serving.model_server.request_logger import RequestLogger
from serving.model_server.version_manager import VersionManager

log = logging.getLogger(__name__)


def tf_serving_refusal(config: ModelServerConfig) -> str | None:
    """What tensorflow_model_server's ValidateModelConfigList / GetPlatform say about a config (None: nothing)."""
    for model in config.model_config_list.config:
        if not model.model_platform and not model.model_type:
            return ("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                    f"ModelServerConfig::model_platform, model name is {model.name}")
        if "://" not in model.base_path and not os.path.isabs(model.base_path):
            return f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}"
    return None


class ConfigReloader:
    """Validates and applies new configs, remembering the labels in force.

    Args:
        manager, request_logger: what a config is applied to.
        config: the config the server started with (its labels are the current ones).
        allow_unavailable_labels: --allow_version_labels_for_unavailable_models.
    """

    def __init__(self, manager: VersionManager, request_logger: RequestLogger | None, config: ModelServerConfig,
                 allow_unavailable_labels: bool = False):
        self._manager = manager
        self._request_logger = request_logger
        self._allow_unavailable_labels = allow_unavailable_labels
        self._labels = self._labels_of(config)
        self._lock = threading.Lock()

    @staticmethod
    def _labels_of(config: ModelServerConfig) -> dict[str, dict[str, int]]:
        return {m.name: dict(m.version_labels) for m in config.model_config_list.config}

    def _check_labels(self, config: ModelServerConfig) -> None:
        available = self._manager.available_versions()
        for model in config.model_config_list.config:
            for label, version in sorted(model.version_labels.items()):
                if version in available.get(model.name, ()):
                    continue
                if self._allow_unavailable_labels:
                    existing = self._labels.get(model.name, {}).get(label)
                    if existing is None or existing == version:
                        continue
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Request to assign label to version {version} of model {model.name}, which is not "
                    "currently available for inference")

    def apply(self, config: ModelServerConfig) -> None:
        """Validates `config` (nothing changes when it fails) and applies it.

        Raises:
            ServingError: INVALID_ARGUMENT or FAILED_PRECONDITION, saying what to fix.
        """
        with self._lock:
            refusal = tf_serving_refusal(config)
            if refusal is not None:
                raise invalid_argument(refusal)
            try:
                config = load_model_server_config(config)
            except ConfigError as e:
                raise invalid_argument(str(e)) from e
            self._check_labels(config)
            try:
                if self._request_logger is not None:
                    self._request_logger.configure(config)
                self._manager.reload_config(config)
            except ConfigError as e:
                raise invalid_argument(str(e)) from e
            self._labels = self._labels_of(config)


class ConfigFilePoller:
    """Re-reads a model config file every `interval_s` and applies it when its text changed
    (TF Serving's --model_config_file_poll_wait_seconds). A bad file is logged and skipped;
    the models keep serving."""

    def __init__(self, path: str, reloader: ConfigReloader, interval_s: float):
        self._path, self._reloader, self._interval_s = path, reloader, interval_s
        self._text = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-config-poller", daemon=True)

    def _read(self) -> str | None:
        try:
            with open(self._path, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            log.warning("cannot read model config file %s: %s", self._path, e)
            return None

    def start(self) -> "ConfigFilePoller":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def poll_once(self) -> None:
        text = self._read()
        if text is None or text == self._text:
            return
        try:
            config = ModelServerConfig()
            try:
                text_format.Parse(text, config)
            except text_format.ParseError as e:
                raise ConfigError(f"not a valid text-format ModelServerConfig: {e}") from e
            self._reloader.apply(config)
        except (ConfigError, ServingError) as e:
            log.error("model config file %s changed but was not applied: %s", self._path, e)
        else:
            log.info("model config file %s changed: applied", self._path)
        self._text = text

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.poll_once()
            except Exception:  # never let a bad poll kill the poller
                log.exception("model config poll failed")
