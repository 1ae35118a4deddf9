"""TF Serving's REST API over rest_http.py's HTTP/1.1 server.

Routes (TF Serving's paths, matched case-insensitively as it does; anything else
is 400 "Malformed request: <method> <path>"):
  POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict
       {"signature_name": ..., "instances": [...]}  -> {"predictions": [...]}
       {"signature_name": ..., "inputs": {...}}     -> {"outputs": ...}
  POST ...:classify / ...:regress  {"examples": [...]} -> TF Serving's checks (inference.py)
  GET  /v1/models/<name>[/versions/<v>|/labels/<l>]          -> model status
  GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata -> signature_def metadata
  GET  /healthz -> 200 when every configured model serves a version, else 503
  GET  <--monitoring_config_file path> -> Prometheus text (when configured)

With a token configured (auth.py) every request but GET /healthz needs
`Authorization: Bearer <token>` (else 401, before the body is read); with TLS
(tls.py) the server speaks HTTPS only, handshaking on each connection's own thread.

JSON follows TF Serving's json_tensor.cc: integer inputs take JSON integers in
range (3.0 is not an int32), floats any number, bool true/false; strings are
JSON strings (UTF-8) or {"b64": "..."}; an extra key in a columnar "inputs"
object is ignored. String outputs come back as JSON strings, or {"b64": ...}
when not valid UTF-8 or when the output name ends in "_bytes" (TF Serving's
rule). Errors are {"error": "..."} with TF Serving's HTTP status for the
underlying gRPC code.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import re
import ssl
import time
import urllib.parse

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving import names
from serving.model_server import inference, rest_http
from serving.model_server.auth import TokenAuth
from serving.model_server.errors import ServingError, invalid_argument
from serving.model_server.grpc_service import SIGNATURE_DEF_FIELD, status_response
from serving.model_server.limits import UNLIMITED, RequestLimits, check_rows
from serving.model_server.metrics import UNKNOWN_MODEL, ServerMetrics
from serving.model_server.predictor import Predictor
from serving.model_server.signatures import Signature

log = logging.getLogger(__name__)

# TF Serving's own path patterns (http_rest_api_util.cc), case-insensitive like them.
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_INT64_MAX = 2**63 - 1
_STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
HEALTH_PATH = "/healthz"  # open without a token, for probes


def _decode_strings(value, path: str):
    """JSON strings / {"b64": ...} (nested lists) -> bytes, leaving other values alone."""
    if isinstance(value, list):
        return [_decode_strings(v, path) for v in value]
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError as e:
                raise invalid_argument(f"{path}: invalid base64 in b64 value: {e}") from e
        raise invalid_argument(f"{path}: unexpected JSON object {json.dumps(value)[:80]}; only {{\"b64\": ...}} is allowed")
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


_INT_RANGES = {tf.int8: (-2**7, 2**7 - 1), tf.uint8: (-2**31, 2**31 - 1), tf.int16: (-2**31, 2**31 - 1),
               tf.int32: (-2**31, 2**31 - 1), tf.int64: (-2**63, 2**63 - 1), tf.uint32: (0, 2**32 - 1),
               tf.uint64: (0, 2**64 - 1)}


def _type_error(name: str, value, spec: tf.TensorSpec) -> ServingError:
    """TF Serving's json_tensor.cc TypeError wording, prefixed with the input name."""
    kind = ("Number" if isinstance(value, (int, float)) and not isinstance(value, bool) else
            "Bool" if isinstance(value, bool) else "String" if isinstance(value, str) else
            "Object" if isinstance(value, dict) else "Array" if isinstance(value, list) else "Null")
    return invalid_argument(f"input {name!r}: JSON Value: {json.dumps(value)[:80]} Type: {kind} "
                            f"is not of expected type: {spec.dtype.name}")


def _first_leaf(value, accept):
    """The first scalar in nested lists for which accept() is False (None: all accepted).

    Iterative, so deeply nested input cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif not accept(item):
            return (item,)
    return None


def json_to_ndarray(name: str, value, spec: tf.TensorSpec) -> np.ndarray:
    """Converts one input's JSON value to an ndarray of the signature's dtype.

    Types follow TF Serving (json_tensor.cc): integer dtypes take JSON integers in
    range only (3.0 is not an int32), floats take any number, bool takes
    true/false, strings take strings or {"b64": ...}.
    """
    try:
        if spec.dtype == tf.string:
            decoded = _decode_strings(value, f"input {name!r}")
            array = np.array(decoded, dtype=object)
            if array.size and not all(isinstance(v, bytes) for v in array.ravel()):
                raise invalid_argument(f"input {name!r}: expected strings (DT_STRING), received other JSON values")
            return array
        if spec.dtype == tf.bool:
            accept = lambda v: isinstance(v, bool)  # noqa: E731
        elif spec.dtype.is_integer:
            low, high = _INT_RANGES.get(spec.dtype, (-2**63, 2**63 - 1))
            accept = lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high  # noqa: E731
        else:
            accept = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        bad = _first_leaf(value, accept)
        if bad is not None:
            raise _type_error(name, bad[0], spec)
        array = np.array(value)
        if array.dtype == object:
            raise invalid_argument(f"input {name!r}: ragged lists; every row must have the same length")
        return array.astype(spec.dtype.as_numpy_dtype)
    except ServingError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise invalid_argument(f"input {name!r}: cannot convert JSON to {spec.dtype.name}: {e}") from e


def parse_predict_body(body: dict, signature: Signature,
                       limits: RequestLimits = UNLIMITED) -> tuple[dict[str, np.ndarray], bool]:
    """Turns a predict request body into input arrays (rows limit checked before any array is built).

    Returns:
        (arrays, row_format): row_format is True for "instances".
    """
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise invalid_argument('Missing or duplicate "instances"/"inputs"; send exactly one of them')
    input_names = sorted(signature.inputs)
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid_argument('"instances" must be a non-empty list')
        check_rows(limits, len(instances))
        named = all(isinstance(i, dict) and set(i) != {"b64"} for i in instances)
        if named:
            columns = {}
            for name in input_names:
                missing = [i for i, inst in enumerate(instances) if name not in inst]
                if missing:
                    raise invalid_argument(f"instance {missing[0]} is missing input {name!r}; every instance needs {input_names}")
                columns[name] = [inst[name] for inst in instances]
            extra = sorted({k for inst in instances for k in inst} - set(input_names))
            if extra:
                raise invalid_argument(f"instances carry unknown inputs {extra}; the signature takes {input_names}")
        elif len(input_names) == 1:
            columns = {input_names[0]: instances}
        else:
            raise invalid_argument(f"the signature has inputs {input_names}: each instance must be an object naming them")
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and set(inputs) != {"b64"}:
            columns = dict(inputs)
        elif len(input_names) == 1:
            columns = {input_names[0]: inputs}
        else:
            raise invalid_argument(f'"inputs" must be an object naming the signature inputs {input_names}')
        # As TF Serving: extra keys are ignored, the first missing input is named.
        missing = sorted(set(input_names) - set(columns))
        if missing:
            raise invalid_argument(f"Missing named input: {missing[0]} in 'inputs' object. "
                                   f"The signature takes {input_names}")
    for name in input_names:
        if isinstance(columns[name], list):
            check_rows(limits, len(columns[name]))
    arrays = {name: json_to_ndarray(name, columns[name], signature.inputs[name]) for name in input_names}
    return arrays, has_instances


def _to_json_value(array: np.ndarray, name: str):
    if array.dtype == object or array.dtype.kind == "S":
        force_b64 = name.endswith("_bytes")

        def enc(v):
            if isinstance(v, list):
                return [enc(x) for x in v]
            if not force_b64:
                try:
                    return v.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(v).decode("ascii")}

        return enc(array.tolist())
    return array.tolist()


def format_predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """TF Serving's response shapes for the row and columnar formats."""
    if not row_format:
        if len(outputs) == 1:
            (name, value), = outputs.items()
            return {"outputs": _to_json_value(value, name)}
        return {"outputs": {k: _to_json_value(v, k) for k, v in outputs.items()}}
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise invalid_argument(
            f"outputs have inconsistent batch sizes {sizes}; use the columnar \"inputs\" format for this signature"
        )
    if len(outputs) == 1:
        (name, value), = outputs.items()
        return {"predictions": _to_json_value(value, name)}
    columns = {k: _to_json_value(v, k) for k, v in outputs.items()}
    rows = next(iter(sizes.values()))
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(rows)]}


def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = int(version)
    elif label is not None:
        spec.version_label = label
    return spec


class RestApi:
    """Handles REST requests; `make_server` binds it to an HTTP server (rest_http.py).

    Args:
        auth: when given, requests other than GET /healthz need its bearer token.
        timeout_s: read/idle timeout of a connection and deadline of a request
            (--rest_api_timeout_in_ms); None: none.
        max_connections: connections served at once (--rest_api_num_threads); None: no cap.
        metrics_path: serve Prometheus metrics at this GET path (--monitoring_config_file).
    """

    def __init__(self, predictor: Predictor, metrics: ServerMetrics, max_body_bytes: int,
                 auth: TokenAuth | None = None, timeout_s: float | None = rest_http.DEFAULT_TIMEOUT_S,
                 max_connections: int | None = None, metrics_path: str | None = None):
        self.predictor = predictor
        self.manager = predictor.manager
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.auth = auth
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.metrics_path = metrics_path

    def admit(self, method: str, path: str, headers) -> None:
        """Raises rest_http.Refusal (401) for a request without the token, before its body is read."""
        refusal = self.unauthenticated(method, path, headers.get("Authorization"))
        if refusal is not None:
            raise rest_http.Refusal(401, refusal, {"WWW-Authenticate": 'Bearer realm="recsys-model-server"'})

    def respond(self, method: str, path: str, body: bytes, deadline: float | None = None):
        """(status, JSON payload or (content type, bytes)) for one admitted request."""
        if self.metrics_path is not None and method == "GET" and path.split("?", 1)[0] == self.metrics_path:
            return 200, self.metrics.exposition()
        return self.handle(method, path, body, deadline)

    def route(self, method: str, path: str):
        """(api, name, version, label, verb, subresource) for a /v1/models path, as TF Serving parses it.

        Raises:
            ServingError: INVALID_ARGUMENT "Malformed request" (HTTP 400) for anything else,
                as TF Serving answers unknown paths, verbs and methods.
        """
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        match = None
        if method == "POST":
            match = _PREDICTION_PATH.fullmatch(path)
        elif method == "GET":
            match = _STATUS_PATH.fullmatch(path)
        if not match:
            raise malformed
        name, version, label, last = match.groups()
        name = urllib.parse.unquote(name) if name else ""
        if version is not None:
            number = int(version)
            if number > _INT64_MAX:
                raise invalid_argument(f"Failed to convert version: {version} to numeric.")
            version = number
        if label is not None:
            label = urllib.parse.unquote(label)
        if method == "POST":
            verb = last.lower()
            return {"predict": "Predict", "classify": "Classify", "regress": "Regress"}[verb], name, version, label
        if not name:
            raise invalid_argument("Missing model name in request.")
        # TF Serving compares the subresource case-sensitively (after a case-insensitive match).
        return ("GetModelMetadata" if last == "metadata" else "GetModelStatus"), name, version, label

    def handle(self, method: str, path: str, body: bytes, deadline: float | None = None) -> tuple[int, dict]:
        """Returns (http status, JSON body) for one request; never raises."""
        path = path.split("?", 1)[0]
        if path == HEALTH_PATH and method == "GET":
            ok, reason = self.manager.health()
            versions = self.manager.available_versions()
            if ok:
                return 200, {"status": "ok", "models": versions}
            return 503, {"error": reason, "models": versions}
        start = time.monotonic()
        api, name, signature_label = "Unknown", "", ""
        code = grpc.StatusCode.OK
        try:
            api, name, version, label = self.route(method, path)
            if api == "Predict":
                request = self._parse_json(body)
                signature_label = request.get("signature_name") or names.DEFAULT_SIGNATURE
                result = self._predict(name, version, label, request, deadline)
            elif api in ("Classify", "Regress"):
                request = self._parse_json(body)
                signature_label = request.get("signature_name") or names.DEFAULT_SIGNATURE
                self._classify_regress(api, name, version, label, request)
            elif api == "GetModelMetadata":
                result = self._metadata(name, version, label)
            else:
                result = self._status(name, version, label)
            return 200, result
        except ServingError as e:
            code = e.code
            return e.http_status, {"error": e.message}
        except RecursionError:  # nesting past what the parser or the converters walk
            code = grpc.StatusCode.INVALID_ARGUMENT
            return 400, {"error": "JSON Parse error: the document is nested too deeply"}
        except Exception:  # a bug must cost one request, not the server, and not leak internals
            log.exception("REST %s %s failed", method, path)
            code = grpc.StatusCode.INTERNAL
            return 500, {"error": "internal error; the server log has the details"}
        finally:
            model_label = name if self.manager.is_configured(name) else UNKNOWN_MODEL
            self.metrics.observe_request("rest_" + api, model_label, signature_label, code.name, time.monotonic() - start)

    @staticmethod
    def _parse_json(body: bytes) -> dict:
        if not body:
            raise invalid_argument("JSON Parse error: The document is empty")
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise invalid_argument(f"JSON Parse error: {e}") from e
        if not isinstance(request, dict):
            raise invalid_argument("JSON Value is not an object; send {\"instances\": [...]} or {\"inputs\": ...}")
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid_argument(f"JSON Value: {json.dumps(signature_name)[:80]} not formatted correctly. "
                                   "'signature_name' key must be a string value.")
        return request

    def _classify_regress(self, api: str, name, version, label, request: dict) -> None:
        """:classify / :regress: TF Serving's body checks, then its signature checks (inference.py)."""
        examples = request.get("examples")
        if examples is None:
            raise invalid_argument(f"JSON Value: {json.dumps(request)[:80]} When method is classify, key "
                                   "'examples' is expected and was not found")
        if not isinstance(examples, list):
            raise invalid_argument("Expecting 'examples' value to be an list/array")
        if not examples:
            raise invalid_argument("'examples' value is an empty array")
        for example in examples:
            if not isinstance(example, dict):
                raise invalid_argument(f"Example must be JSON object but got JSON {type(example).__name__}")
        spec = _model_spec(name, version, label)
        version_value = spec.version.value if spec.HasField("version") else None
        with self.manager.lease(name, version_value, spec.version_label or None) as loaded:
            signature_name = request.get("signature_name", "")
            if api == "Classify":
                inference.classify(loaded, signature_name)
            else:
                inference.regress(loaded, signature_name)

    def _predict(self, name, version, label, request: dict, deadline: float | None = None) -> dict:
        request_time = time.time()
        signature_name = request.get("signature_name", "")
        spec = _model_spec(name, version, label)
        spec.signature_name = signature_name
        version_value = spec.version.value if spec.HasField("version") else None
        with self.manager.lease(name, version_value, spec.version_label or None) as loaded:
            signature = self.predictor.signature(loaded, signature_name)
            arrays, row_format = parse_predict_body(request, signature, self.predictor.limits)
            outputs = self.predictor.run(loaded, signature, arrays, [], deadline)
        result = format_predict_response(outputs, row_format)
        self.predictor.log_rest_predict(spec, loaded.version, signature.name, request_time, arrays, outputs)
        return result

    def _status(self, name, version, label) -> dict:
        response = status_response(self.manager, _model_spec(name, version, label))
        return {
            "model_version_status": [
                {
                    "version": str(s.version),
                    "state": _STATE_NAMES.get(s.state, str(s.state)),
                    "status": {
                        "error_code": grpc.StatusCode.OK.name if s.status.error_code == 0 else _code_name(s.status.error_code),
                        "error_message": s.status.error_message,
                    },
                }
                for s in response.model_version_status
            ]
        }

    def _metadata(self, name, version, label) -> dict:
        spec = _model_spec(name, version, label)
        version_value = spec.version.value if spec.HasField("version") else None
        with self.manager.lease(name, version_value, spec.version_label or None) as loaded:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = loaded.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(loaded.signature_def_map)
        result = json_format.MessageToDict(response, preserving_proto_field_name=True)
        result["model_spec"].setdefault("signature_name", "")
        return result

    def unauthenticated(self, method: str, path: str, authorization: str | None) -> str | None:
        """Why a request must be refused for its token (None: let it through)."""
        if self.auth is None or (method == "GET" and path.split("?", 1)[0] == HEALTH_PATH):
            return None
        error = self.auth.check(authorization)
        if error is not None:
            self.metrics.auth_failures.labels("rest").inc()
        return error

    def make_server(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    worker_index: int | None = None) -> http.server.ThreadingHTTPServer:
        """Binds an HTTP server (HTTPS with `ssl_context`) serving this API (not started).

        worker_index: for a worker of a multi-process server: the socket gets
        SO_REUSEPORT and every answer the rest_http.WORKER_HEADER header.
        """
        handler = type("RestHandler", (rest_http.Handler,), {
            "api": self, "timeout": self.timeout_s, "max_body_bytes": self.max_body_bytes,
            "worker_index": worker_index})
        server_class = rest_http.PlainServer if ssl_context is None else rest_http.TlsServer
        server_class = type(server_class.__name__, (server_class,), {
            "max_connections": self.max_connections, "reuse_port": worker_index is not None})
        if ssl_context is None:
            return server_class((host, port), handler)
        return server_class((host, port), handler, ssl_context)


def _code_name(number: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return str(number)

