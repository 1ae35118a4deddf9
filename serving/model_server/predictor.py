"""The one Predict code path shared by gRPC, REST and warmup replay.

Successful gRPC and REST calls (not warmup replays) go to the request logger
when one is given; it decides whether to sample them.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2

from serving import names
from serving.model_server.batching import Batcher
from serving.model_server.errors import ServingError
from serving.model_server.limits import (
    UNLIMITED, RequestLimits, check_elements, check_finite, check_ranges, check_response, check_response_estimate,
    check_rows)
from serving.model_server.request_logger import RequestLogger
from serving.model_server.signatures import (
    Signature,
    decode_inputs,
    ndarray_to_tensor_proto,
    run_signature,
    select_outputs,
    validate_arrays,
)
from serving.model_server.version_manager import LoadedVersion, VersionManager


def check_deadline(deadline: float | None) -> None:
    """Raises DEADLINE_EXCEEDED once time.monotonic() passed `deadline`."""
    if deadline is not None and time.monotonic() >= deadline:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "request deadline exceeded before the model ran")


def model_spec_version(spec) -> tuple[int | None, str | None]:
    """(version, label) from a ModelSpec's version_choice oneof."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def make_response(model: str, version: int, signature_name: str,
                  outputs: dict[str, np.ndarray]) -> predict_pb2.PredictResponse:
    """A PredictResponse naming what served it, outputs in TF Serving's field encoding."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model
    response.model_spec.version.value = version
    response.model_spec.signature_name = signature_name
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(ndarray_to_tensor_proto(value))
    return response


class Predictor:
    """Runs Predict requests on leased versions, batching them when enabled.

    Args:
        manager: where versions come from.
        batcher: a Batcher, or None to run every request on its own.
        max_batch_size: most rows per request (None: unlimited). With batching
            on this is the batch size, as TF Serving enforces.
        request_logger: where successful calls are offered for request logging.
        limits: per-request rows/elements/response limits (limits.py); warmup
            replays are held to them too.
    """

    def __init__(self, manager: VersionManager, batcher: Batcher | None = None, max_batch_size: int | None = None,
                 request_logger: RequestLogger | None = None, limits: RequestLimits = UNLIMITED):
        self.manager = manager
        self.batcher = batcher
        self.max_batch_size = max_batch_size
        self.request_logger = request_logger
        self.limits = limits

    def predict(self, request: predict_pb2.PredictRequest, deadline: float | None = None) -> predict_pb2.PredictResponse:
        """Serves one gRPC PredictRequest."""
        request_time = time.time()
        version, label = model_spec_version(request.model_spec)
        with self.manager.lease(request.model_spec.name, version, label) as loaded:
            response = self.predict_on_version(loaded, request, deadline)
        if self.request_logger is not None:
            spec = response.model_spec
            self.request_logger.log_predict(spec.name, spec.version.value, spec.signature_name, request_time,
                                            lambda: (request, response))
        return response

    def log_rest_predict(self, request_spec, version: int, signature_name: str, request_time: float,
                         arrays: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Offers a successful REST predict for logging, as the equivalent gRPC request and response.

        Args:
            request_spec: the ModelSpec the URL and body asked for.
            version, signature_name: what served it.
        """
        if self.request_logger is None:
            return

        def build():  # on the writer thread
            request = predict_pb2.PredictRequest()
            request.model_spec.CopyFrom(request_spec)
            for key, value in arrays.items():
                request.inputs[key].CopyFrom(ndarray_to_tensor_proto(value))
            return request, make_response(request_spec.name, version, signature_name, outputs)

        self.request_logger.log_predict(request_spec.name, version, signature_name, request_time, build)

    def predict_on_version(self, loaded: LoadedVersion, request: predict_pb2.PredictRequest,
                           deadline: float | None = None) -> predict_pb2.PredictResponse:
        """Runs a PredictRequest on a given version (also used to replay warmup)."""
        signature = self.signature(loaded, request.model_spec.signature_name)
        arrays = decode_inputs(signature, request.inputs, self.limits)
        outputs = self.run(loaded, signature, arrays, list(request.output_filter), deadline)
        return make_response(request.model_spec.name or loaded.model_name, loaded.version, signature.name, outputs)

    @staticmethod
    def signature(loaded: LoadedVersion, signature_name: str) -> Signature:
        """Looks up a signature; FAILED_PRECONDITION when absent, as TF Serving answers."""
        name = signature_name or names.DEFAULT_SIGNATURE
        signature = loaded.signatures.get(name)
        if signature is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{name}" not found. Model {loaded.model_name} version {loaded.version} '
                f"has: {sorted(loaded.signatures)}",
            )
        return signature

    def run(self, loaded: LoadedVersion, signature: Signature, arrays: dict[str, np.ndarray],
            output_filter: list[str], deadline: float | None) -> dict[str, np.ndarray]:
        """Validates decoded inputs (shapes, limits, finite floats), runs (batched or not),
        applies output_filter and checks the response size before anything encodes it."""
        validate_arrays(signature, arrays, self.max_batch_size)
        check_rows(self.limits, max((a.shape[0] for a in arrays.values() if a.ndim), default=None))
        check_elements(self.limits, sum(a.size for a in arrays.values()))
        check_finite(signature, arrays)
        check_ranges(signature, arrays)
        wanted = select_outputs(signature, output_filter)
        check_response_estimate(self.limits, signature, arrays, wanted)
        check_deadline(deadline)
        if self.batcher is not None and Batcher.can_batch(signature, arrays):
            outputs = self.batcher.submit(loaded, signature, arrays, deadline)
            outputs = {k: outputs[k] for k in wanted}
        else:
            outputs = run_signature(signature, arrays, wanted)
        check_response(self.limits, outputs)
        return outputs
