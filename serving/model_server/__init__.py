"""Embedded model server speaking TensorFlow Serving's gRPC and REST APIs.

TF Serving's binary cannot load ScaNN's custom ops, so the project serves its
SavedModels with this Python server; any TF Serving client works unchanged.

Public API (imported lazily, so `serving.model_server.cli --help` does not load
TensorFlow):
    ModelServer, BatchingOptions, RequestLoggingOptions, TlsOptions,
    read_token_file, read_prediction_logs, infra_validate,
    InfraValidationError, ServingError, ConfigError, load_model_server_config,
    parse_model_server_config, load_batching_parameters,
    parse_batching_parameters.
Command line: `python -m serving.model_server --model_config_file ...`.
"""

import importlib

_EXPORTS = {
    "read_token_file": "auth",
    "BatchingOptions": "config",
    "RequestLoggingOptions": "config",
    "ConfigError": "config",
    "load_batching_parameters": "config",
    "load_model_server_config": "config",
    "parse_batching_parameters": "config",
    "parse_model_server_config": "config",
    "ServingError": "errors",
    "InfraValidationError": "infra_validation",
    "infra_validate": "infra_validation",
    "read_prediction_logs": "request_log",
    "ModelServer": "server",
    "TlsOptions": "tls",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
