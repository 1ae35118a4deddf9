"""Model server configuration: TF Serving's own text formats.

Two files are read, both in the formats `tensorflow_model_server` reads, so one
config works with either server:

* `--model_config_file`: a text-format `ModelServerConfig` with a
  `model_config_list` (name, base_path, model_platform, model_version_policy,
  version_labels).
* `--batching_parameters_file`: a text-format `BatchingParameters`
  (`max_batch_size { value: 128 }` ...). The proto is not shipped in the pip
  package, so this module parses its four scalar fields itself; the plain
  `max_batch_size: 128` form is accepted too.

A model's `logging_config` (request logging, see request_logger.py) is
validated here too, so a bad one fails at startup and on config reloads.

Difference from TF Serving: a relative `base_path` is resolved against the
current working directory when the config is loaded (TF Serving passes it to
the file system as is, which in practice also means the working directory, but
it never rewrites the config).
"""

from __future__ import annotations

import dataclasses
import os
import re

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

# Platforms this server can load: SavedModels only, like TF Serving's default.
_SUPPORTED_PLATFORMS = ("", "tensorflow")
# logging_config.log_collector_config.type values this server can write.
LOG_COLLECTOR_TYPES = ("file",)


class ConfigError(ValueError):
    """A config file or option is invalid; the message says what to fix."""


def parse_model_server_config(text: str, source: str = "<string>") -> ModelServerConfig:
    """Parses a text-format `ModelServerConfig` and validates it.

    Args:
        text: the file contents.
        source: where the text came from, for error messages.

    Returns:
        The validated config, with every base_path made absolute.

    Raises:
        ConfigError: on a syntax error or an unsupported setting.
    """
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: not a valid text-format ModelServerConfig: {e}") from e
    return validate_model_server_config(config, source)


def load_model_server_config(config: ModelServerConfig | str | os.PathLike) -> ModelServerConfig:
    """Returns a validated copy of `config`, reading it first when given a path."""
    if isinstance(config, ModelServerConfig):
        copy = ModelServerConfig()
        copy.CopyFrom(config)
        return validate_model_server_config(copy, "<ModelServerConfig>")
    path = os.fspath(config)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read model config file {path!r}: {e}; pass --model_config_file") from e
    return parse_model_server_config(text, path)


def validate_model_server_config(config: ModelServerConfig, source: str) -> ModelServerConfig:
    """Checks a config in place, resolving relative base paths; returns it."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{source}: custom_model_config is not supported; use model_config_list")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        where = f"{source}: model {model.name!r}"
        if not model.name:
            raise ConfigError(f"{source}: every model needs a non-empty name")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", model.name):
            raise ConfigError(f"{where}: names may only use letters, digits, '_', '-' and '.'")
        if model.name in seen:
            raise ConfigError(f"{where}: duplicate model name; each model must appear once")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"{where}: base_path is required")
        if model.model_platform not in _SUPPORTED_PLATFORMS:
            raise ConfigError(
                f"{where}: model_platform {model.model_platform!r} is not supported; use 'tensorflow'"
            )
        if model.model_type:
            raise ConfigError(f"{where}: the deprecated model_type field is not supported; remove it")
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ConfigError(f"{where}: latest.num_versions must be >= 1")
        if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
            raise ConfigError(f"{where}: specific policy needs at least one version")
        for label, version in model.version_labels.items():
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", label) or label[0].isdigit():
                raise ConfigError(f"{where}: bad version label {label!r}; use letters, digits, '_' or '-', not starting with a digit")
            if version <= 0:
                raise ConfigError(f"{where}: label {label!r} must point at a version > 0")
        if _is_remote(model.base_path):
            raise ConfigError(f"{where}: remote base_path {model.base_path!r} is not supported; sync it to a local directory")
        model.base_path = os.path.abspath(model.base_path)
        if model.HasField("logging_config"):
            _validate_logging_config(model.logging_config, where)
    prefixes = [m.logging_config.log_collector_config.filename_prefix
                for m in config.model_config_list.config if m.HasField("logging_config")]
    shared = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if shared:
        raise ConfigError(f"{source}: several models log to filename_prefix {shared[0]!r}; give each model its own")
    return config


def _validate_logging_config(logging_config, where: str) -> None:
    """Checks a ModelConfig.logging_config in place; makes filename_prefix absolute."""
    collector = logging_config.log_collector_config
    if collector.type not in LOG_COLLECTOR_TYPES:
        raise ConfigError(f"{where}: logging_config.log_collector_config.type {collector.type!r} is not supported; "
                          f"use one of {list(LOG_COLLECTOR_TYPES)}")
    prefix = collector.filename_prefix
    if not prefix:
        raise ConfigError(f'{where}: logging_config.log_collector_config.filename_prefix is required, '
                          f'e.g. filename_prefix: "/var/log/recsys/requests"')
    if _is_remote(prefix):
        raise ConfigError(f"{where}: remote filename_prefix {prefix!r} is not supported; log to a local directory")
    if prefix.endswith(("/", os.sep)):
        raise ConfigError(f"{where}: filename_prefix {prefix!r} names a directory; add a file name prefix, e.g. {prefix}requests")
    sampling = logging_config.sampling_config
    if not 0.0 <= sampling.sampling_rate <= 1.0:  # also rejects NaN
        raise ConfigError(f"{where}: logging_config.sampling_config.sampling_rate must be in [0, 1], "
                          f"got {sampling.sampling_rate}")
    if sampling.attributes:
        raise ConfigError(f"{where}: logging_config.sampling_config.attributes is not supported; remove it")
    collector.filename_prefix = os.path.abspath(prefix)


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    """A config serving one model with the default policy (TF Serving's --model_name/--model_base_path)."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return validate_model_server_config(config, "--model_base_path")


def _is_remote(path: str) -> bool:
    return "://" in path


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Server-side batching knobs, TF Serving's BatchingParameters.

    Attributes:
        max_batch_size: most rows in one batch; a single request with more rows is
            rejected with INVALID_ARGUMENT, as TF Serving does.
        batch_timeout_micros: how long a non-full batch waits for more requests.
        num_batch_threads: batches run in parallel.
        max_enqueued_batches: per-queue backlog; past it requests get UNAVAILABLE.
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 100

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name == "batch_timeout_micros" else 1
            if not isinstance(value, int) or value < minimum:
                raise ConfigError(f"batching option {field.name} must be an integer >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class RequestLoggingOptions:
    """Server-wide request logging settings (per-model ones live in the model config).

    Attributes:
        default_dir: log every model without a logging_config to
            `<default_dir>/<model>-<timestamp>-<seq>.tfrecord`; None: only
            models with a logging_config are logged.
        default_sampling_rate: sampling rate for those models, in [0, 1].
        max_file_bytes: a log file is closed once it holds this many bytes...
        max_file_records: ...or this many records...
        max_file_age_s: ...or is this old (so quiet models' logs still appear).
        queue_size: records waiting for the writer thread; past it records are
            dropped (and counted), never waited for.
        allowed_dirs: directories request log files may be written under (a
            config reload naming a prefix elsewhere is refused); None: the
            directories of the startup config's prefixes and default_dir.
        worker_index: set by a worker of a multi-process server (--num_workers):
            its files are named `<prefix>-w<i>-<timestamp>-<seq>.tfrecord`.
    """

    default_dir: str | None = None
    default_sampling_rate: float = 1.0
    max_file_bytes: int = 64 * 1024 * 1024
    max_file_records: int = 100_000
    max_file_age_s: float = 600.0
    queue_size: int = 10_000
    allowed_dirs: tuple[str, ...] | None = None
    worker_index: int | None = None

    def __post_init__(self):
        if not 0.0 <= self.default_sampling_rate <= 1.0:
            raise ConfigError(f"request log sampling rate must be in [0, 1], got {self.default_sampling_rate}")
        for name in ("max_file_bytes", "max_file_records", "queue_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"request logging option {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.max_file_age_s > 0:
            raise ConfigError(f"request logging option max_file_age_s must be > 0, got {self.max_file_age_s!r}")
        if self.default_dir is not None:
            if not self.default_dir or _is_remote(self.default_dir):
                raise ConfigError(f"request log directory must be a local directory, got {self.default_dir!r}")
            object.__setattr__(self, "default_dir", os.path.abspath(self.default_dir))
        if self.allowed_dirs is not None:
            dirs = tuple(self.allowed_dirs)
            if any(not d or _is_remote(d) for d in dirs):
                raise ConfigError(f"request log allowed directories must be local directories, got {list(dirs)}")
            object.__setattr__(self, "allowed_dirs", tuple(os.path.abspath(d) for d in dirs))


_BATCHING_FIELDS = {f.name for f in dataclasses.fields(BatchingOptions)}
# TF Serving fields we accept and ignore because they only tune its C++ runtime.
_IGNORED_BATCHING_FIELDS = {
    "thread_pool_name", "allowed_batch_sizes", "pad_variable_length_inputs",
    "enable_large_batch_splitting", "max_execution_batch_size",
}


def parse_batching_parameters(text: str, source: str = "<string>") -> BatchingOptions:
    """Parses TF Serving's text-format BatchingParameters.

    Accepts `max_batch_size { value: 128 }` (TF Serving's wrapper form) and
    `max_batch_size: 128`; `#` starts a comment.

    Raises:
        ConfigError: on an unknown field or a non-integer value.
    """
    values: dict[str, int] = {}
    body = re.sub(r"#[^\n]*", "", text)
    pattern = re.compile(
        r"\s*([A-Za-z_]+)\s*(?:\{\s*value\s*:\s*([^\s}]+)\s*\}|:\s*([^\s{}]+)|\{\s*\})\s*"
    )
    pos = 0
    while pos < len(body):
        match = pattern.match(body, pos)
        if not match:
            if body[pos:].strip():
                raise ConfigError(f"{source}: cannot parse batching parameters near {body[pos:pos + 40]!r}")
            break
        pos = match.end()
        name, raw = match.group(1), match.group(2) or match.group(3)
        if name in _IGNORED_BATCHING_FIELDS:
            continue
        if name not in _BATCHING_FIELDS:
            raise ConfigError(f"{source}: unknown batching parameter {name!r}; known: {sorted(_BATCHING_FIELDS)}")
        try:
            values[name] = int(raw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: {name} must be an integer, got {raw!r}") from e
    return BatchingOptions(**values)


def load_batching_parameters(path: str | os.PathLike) -> BatchingOptions:
    """Reads a batching parameters file (see `parse_batching_parameters`)."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_batching_parameters(f.read(), os.fspath(path))
    except OSError as e:
        raise ConfigError(f"cannot read batching parameters file {os.fspath(path)!r}: {e}") from e
