"""gRPC PredictionService and ModelService, using TF Serving's official stubs."""

from __future__ import annotations

import contextlib
import logging
import time

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving.model_server import inference
from serving.model_server.auth import AdminPolicy, authorization_of
from serving.model_server.errors import ServingError, error_code_number, invalid_argument, not_found
from serving.model_server.metrics import UNKNOWN_MODEL, ServerMetrics
from serving.model_server.predictor import Predictor, model_spec_version
from serving.model_server.reload import ConfigReloader
from serving.model_server.version_manager import VersionManager

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
WORKER_METADATA_KEY = "x-model-server-worker"  # rest_http.WORKER_HEADER


def require_model_spec(request) -> None:
    """TF Serving's first check of Predict, Classify, Regress, GetModelMetadata and GetModelStatus."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")


def require_model_name(spec) -> None:
    """ServerCore::ServableRequestFromModelSpec's check, before any model lookup."""
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")


def deadline_of(context: grpc.ServicerContext) -> float | None:
    """The request's deadline as a time.monotonic() value (None: no deadline)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class _Observed:
    """Wraps one RPC: converts errors to gRPC status and records metrics."""

    def __init__(self, metrics: ServerMetrics, manager: VersionManager):
        self._metrics = metrics
        self._manager = manager

    @contextlib.contextmanager
    def __call__(self, api: str, context: grpc.ServicerContext, model: str = "", signature: str = ""):
        start = time.monotonic()
        status, message = grpc.StatusCode.OK, ""
        try:
            yield
        except ServingError as e:
            status, message = e.code, e.message
        except Exception:  # a bug must cost one request, not the server (and not leak internals)
            log.exception("%s failed", api)
            status, message = grpc.StatusCode.INTERNAL, f"internal error in {api}; the server log has the details"
        model_label = model if self._manager.is_configured(model) else UNKNOWN_MODEL
        self._metrics.observe_request(api, model_label, signature, status.name, time.monotonic() - start)
        if status != grpc.StatusCode.OK:
            context.abort(status, message)


class WorkerInterceptor(grpc.ServerInterceptor):
    """Adds trailing metadata `x-model-server-worker: <i>` to every call (a worker of --num_workers N > 1).

    Put first among the interceptors, so that refusals (UNAUTHENTICATED) carry it too.
    """

    def __init__(self, worker_index: int):
        self._metadata = ((WORKER_METADATA_KEY, str(worker_index)),)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:  # every service here is unary-unary
            return handler
        behaviour, metadata = handler.unary_unary, self._metadata

        def tagged(request, context):
            context.set_trailing_metadata(metadata)
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            tagged, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService: Predict, GetModelMetadata, Classify, Regress, MultiInference."""

    def __init__(self, predictor: Predictor, metrics: ServerMetrics):
        self._predictor = predictor
        self._manager = predictor.manager
        self._observed = _Observed(metrics, self._manager)

    def Predict(self, request, context):
        response = None
        with self._observed("Predict", context, request.model_spec.name, request.model_spec.signature_name or "serving_default"):
            require_model_spec(request)
            require_model_name(request.model_spec)
            response = self._predictor.predict(request, deadline_of(context))
        return response

    def GetModelMetadata(self, request, context):
        response = None
        with self._observed("GetModelMetadata", context, request.model_spec.name):
            require_model_spec(request)
            fields = list(request.metadata_field)
            if not fields:
                raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
            for field in fields:
                if field != SIGNATURE_DEF_FIELD:
                    raise invalid_argument(f"Metadata field {field} is not supported")
            require_model_name(request.model_spec)
            version, label = model_spec_version(request.model_spec)
            with self._manager.lease(request.model_spec.name, version, label) as loaded:
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = request.model_spec.name
                response.model_spec.version.value = loaded.version
                response.metadata[SIGNATURE_DEF_FIELD].Pack(loaded.signature_def_map)
        return response

    def _lease(self, spec):
        require_model_name(spec)
        version, label = model_spec_version(spec)
        return self._manager.lease(spec.name, version, label)

    def Classify(self, request, context):
        with self._observed("Classify", context, request.model_spec.name, request.model_spec.signature_name):
            require_model_spec(request)
            with self._lease(request.model_spec) as loaded:
                inference.classify(loaded, request.model_spec.signature_name)

    def Regress(self, request, context):
        with self._observed("Regress", context, request.model_spec.name, request.model_spec.signature_name):
            require_model_spec(request)
            with self._lease(request.model_spec) as loaded:
                inference.regress(loaded, request.model_spec.signature_name)

    def MultiInference(self, request, context):
        spec = inference.multi_inference_model_spec(request)
        with self._observed("MultiInference", context, spec.name):
            with self._lease(spec) as loaded:
                inference.multi_inference(loaded, request)


def status_response(manager: VersionManager, model_spec) -> get_model_status_pb2.GetModelStatusResponse:
    """Builds a GetModelStatusResponse (shared with the REST status endpoint)."""
    if not model_spec.name:  # TF Serving looks the empty name up, and finds nothing
        raise not_found("Could not find any versions of model ")
    version, label = model_spec_version(model_spec)
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in manager.model_status(model_spec.name, version, label):
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = status.state
        entry.status.error_code = error_code_number(status.error_code)
        entry.status.error_message = status.error_message
    return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus and HandleReloadConfigRequest.

    A reload needs the admin credential (auth.AdminPolicy) and goes through
    reload.ConfigReloader (TF Serving's checks, request-log path confinement).
    """

    def __init__(self, manager: VersionManager, metrics: ServerMetrics, reloader: ConfigReloader,
                 admin: AdminPolicy | None = None, reload_refusal: str | None = None):
        self._manager = manager
        self._reload_refusal = reload_refusal  # FAILED_PRECONDITION for every reload (multi-process server)
        self._reloader = reloader
        self._observed = _Observed(metrics, manager)
        self._admin = admin if admin is not None else AdminPolicy(None, "127.0.0.1")

    def GetModelStatus(self, request, context):
        response = None
        with self._observed("GetModelStatus", context, request.model_spec.name):
            require_model_spec(request)
            response = status_response(self._manager, request.model_spec)
        return response

    def HandleReloadConfigRequest(self, request, context):
        response = None
        with self._observed("HandleReloadConfigRequest", context):
            refusal = self._admin.check(authorization_of(context.invocation_metadata()))
            if refusal is not None:
                raise ServingError(*refusal)
            if self._reload_refusal is not None:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, self._reload_refusal)
            self._reloader.apply(request.config)
            response = model_management_pb2.ReloadConfigResponse()
            response.status.error_code = 0
        return response
