"""TF Serving's REST API on the standard library's ThreadingHTTPServer.

Routes (TF Serving's paths and JSON shapes):
  POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict
       {"signature_name": ..., "instances": [...]}  -> {"predictions": [...]}
       {"signature_name": ..., "inputs": {...}}     -> {"outputs": ...}
  GET  /v1/models/<name>[/versions/<v>|/labels/<l>]          -> model status
  GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata -> signature_def metadata
  GET  /healthz -> 200 when every configured model serves a version, else 503

With a token configured (auth.py) every request but GET /healthz needs
`Authorization: Bearer <token>` (else 401); with TLS (tls.py) the server speaks
HTTPS only, handshaking on each connection's own thread.

Strings are JSON strings (UTF-8) or {"b64": "..."}; string outputs come back as
JSON strings, or {"b64": ...} when not valid UTF-8 or when the output name ends
in "_bytes" (TF Serving's rule). Errors are {"error": "..."} with TF Serving's
HTTP status for the underlying gRPC code.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import re
import socket
import ssl
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving.model_server.auth import TokenAuth
from serving.model_server.errors import ServingError, invalid_argument, not_found
from serving.model_server.grpc_service import SIGNATURE_DEF_FIELD, status_response
from serving.model_server.metrics import UNKNOWN_MODEL, ServerMetrics
from serving.model_server.predictor import Predictor
from serving.model_server.signatures import Signature

log = logging.getLogger(__name__)

_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[a-z]+)|(?P<metadata>/metadata))?/?"
)
_STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
HEALTH_PATH = "/healthz"  # open without a token, for probes
TLS_HANDSHAKE_TIMEOUT_S = 10.0


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


def json_to_ndarray(name: str, value, spec: tf.TensorSpec) -> np.ndarray:
    """Converts one input's JSON value to an ndarray of the signature's dtype."""
    try:
        if spec.dtype == tf.string:
            decoded = _decode_strings(value, f"input {name!r}")
            array = np.array(decoded, dtype=object)
            if array.size and not all(isinstance(v, bytes) for v in array.ravel()):
                raise invalid_argument(f"input {name!r}: expected strings (DT_STRING), received other JSON values")
            return array
        if isinstance(value, (dict, str)) or (isinstance(value, list) and _contains(value, (str, dict))):
            raise invalid_argument(
                f"input {name!r}: expected numbers for dtype {spec.dtype.name}, received strings/objects"
            )
        array = np.array(value)
        if array.dtype == object:
            raise invalid_argument(f"input {name!r}: ragged lists; every row must have the same length")
        if spec.dtype.is_integer and array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                raise invalid_argument(f"input {name!r}: expected integers for dtype {spec.dtype.name}")
        if spec.dtype == tf.bool and array.dtype != np.bool_:
            raise invalid_argument(f"input {name!r}: expected true/false for dtype bool")
        return array.astype(spec.dtype.as_numpy_dtype)
    except ServingError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise invalid_argument(f"input {name!r}: cannot convert JSON to {spec.dtype.name}: {e}") from e


def _contains(value, types) -> bool:
    if isinstance(value, list):
        return any(_contains(v, types) for v in value)
    return isinstance(value, types)


def parse_predict_body(body: dict, signature: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """Turns a predict request body into input arrays.

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
        missing = sorted(set(input_names) - set(columns))
        extra = sorted(set(columns) - set(input_names))
        if missing or extra:
            raise invalid_argument(f"inputs do not match the signature: missing {missing}, extra {extra}; expected {input_names}")
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


class _TlsHTTPServer(http.server.ThreadingHTTPServer):
    """HTTPS: the TLS handshake runs on each connection's thread, so a slow client cannot stall accept()."""

    def __init__(self, address, handler, ssl_context: ssl.SSLContext):
        super().__init__(address, handler)
        self.ssl_context = ssl_context

    def finish_request(self, request: socket.socket, client_address) -> None:
        request.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:  # plain HTTP, untrusted client certificate, timeout...
            log.info("REST: TLS handshake with %s failed: %s", client_address[0], e)
            return
        tls.settimeout(None)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class RestApi:
    """Handles REST requests; `make_server` binds it to a ThreadingHTTPServer.

    Args:
        auth: when given, requests other than GET /healthz need its bearer token.
    """

    def __init__(self, predictor: Predictor, metrics: ServerMetrics, max_body_bytes: int,
                 auth: TokenAuth | None = None):
        self.predictor = predictor
        self.manager = predictor.manager
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.auth = auth

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        """Returns (http status, JSON body) for one request."""
        path = path.split("?", 1)[0]
        if path == HEALTH_PATH and method == "GET":
            ok, reason = self.manager.health()
            versions = self.manager.available_versions()
            if ok:
                return 200, {"status": "ok", "models": versions}
            return 503, {"error": reason, "models": versions}
        match = _PATH.fullmatch(path)
        if not match:
            return 404, {"error": f"Malformed request: {method} {path}; see the /v1/models/<name> API"}
        name, version, label = match["name"], match["version"], match["label"]
        api = "Predict" if match["verb"] else ("GetModelMetadata" if match["metadata"] else "GetModelStatus")
        start = time.monotonic()
        signature_label = ""
        code = grpc.StatusCode.OK
        try:
            if match["verb"]:
                if method != "POST":
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"use POST for :{match['verb']}")
                if match["verb"] in ("classify", "regress"):
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                       f":{match['verb']} is not implemented by this model server; use :predict")
                if match["verb"] != "predict":
                    raise not_found(f"unknown method :{match['verb']}; use :predict")
                request = self._parse_json(body)
                signature_label = request.get("signature_name") or "serving_default"
                result = self._predict(name, version, label, request)
            elif method != "GET":
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"use GET for {path}")
            elif match["metadata"]:
                result = self._metadata(name, version, label)
            else:
                result = self._status(name, version, label)
            return 200, result
        except ServingError as e:
            code = e.code
            return e.http_status, {"error": e.message}
        except Exception as e:  # a bug must cost one request, not the server
            log.exception("REST %s %s failed", method, path)
            code = grpc.StatusCode.INTERNAL
            return 500, {"error": f"internal error: {type(e).__name__}: {e}"}
        finally:
            model_label = name if self.manager.is_configured(name) else UNKNOWN_MODEL
            self.metrics.observe_request("rest_" + api, model_label, signature_label, code.name, time.monotonic() - start)

    @staticmethod
    def _parse_json(body: bytes) -> dict:
        try:
            request = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise invalid_argument(f"JSON Parse error: {e}") from e
        if not isinstance(request, dict):
            raise invalid_argument("JSON Value is not an object; send {\"instances\": [...]} or {\"inputs\": ...}")
        return request

    def _predict(self, name, version, label, request: dict) -> dict:
        request_time = time.time()
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid_argument('"signature_name" must be a string')
        spec = _model_spec(name, version, label)
        spec.signature_name = signature_name
        version_value = spec.version.value if spec.HasField("version") else None
        with self.manager.lease(name, version_value, spec.version_label or None) as loaded:
            signature = self.predictor.signature(loaded, signature_name)
            arrays, row_format = parse_predict_body(request, signature)
            outputs = self.predictor.run(loaded, signature, arrays, [], None)
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

    def make_server(self, host: str, port: int,
                    ssl_context: ssl.SSLContext | None = None) -> http.server.ThreadingHTTPServer:
        """Binds a ThreadingHTTPServer (HTTPS with `ssl_context`) serving this API (not started)."""
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "recsys-model-server"

            def log_message(self, format, *args):  # noqa: A002 - keep stderr quiet; metrics count requests
                log.debug("REST %s", format % args)

            def _reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload, allow_nan=True).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, method: str) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    self.close_connection = True
                    self._reply(400, {"error": "bad Content-Length header"})
                    return
                if length > api.max_body_bytes:
                    self.close_connection = True  # the unread body would corrupt the next request
                    self._reply(413, {"error": f"request body of {length} bytes exceeds the {api.max_body_bytes} byte limit"})
                    return
                body = self.rfile.read(length) if length > 0 else b""
                # Checked after reading the body: closing on an unread body resets the connection
                # before the client can read the 401.
                refusal = api.unauthenticated(method, self.path, self.headers.get("Authorization"))
                if refusal is not None:
                    self._reply(401, {"error": refusal}, {"WWW-Authenticate": 'Bearer realm="recsys-model-server"'})
                    return
                status, payload = api.handle(method, self.path, body)
                self._reply(status, payload)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

        if ssl_context is None:
            server = http.server.ThreadingHTTPServer((host, port), Handler)
        else:
            server = _TlsHTTPServer((host, port), Handler, ssl_context)
        server.daemon_threads = True
        return server


def _code_name(number: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return str(number)

