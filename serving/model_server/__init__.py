"""Embedded model server speaking TensorFlow Serving's gRPC and REST APIs.

TF Serving's binary cannot load ScaNN's custom ops, so the project serves its
SavedModels with this Python server; any TF Serving client works unchanged.

Public API:
    ModelServer, BatchingOptions, infra_validate, InfraValidationError,
    load_model_server_config, parse_batching_parameters.
Command line: `python -m serving.model_server --model_config_file ...`.
"""

from serving.model_server.config import (
    BatchingOptions,
    ConfigError,
    load_batching_parameters,
    load_model_server_config,
    parse_batching_parameters,
    parse_model_server_config,
)
from serving.model_server.errors import ServingError
from serving.model_server.infra_validation import InfraValidationError, infra_validate
from serving.model_server.server import ModelServer

__all__ = [
    "BatchingOptions",
    "ConfigError",
    "InfraValidationError",
    "ModelServer",
    "ServingError",
    "infra_validate",
    "load_batching_parameters",
    "load_model_server_config",
    "parse_batching_parameters",
    "parse_model_server_config",
]
