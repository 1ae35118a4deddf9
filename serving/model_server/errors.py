"""The one error type the server raises for a request it cannot serve.

Every layer (signature validation, version lookup, batching) raises
`ServingError` with a gRPC status code; the gRPC service passes the code through
and the REST layer maps it to an HTTP status exactly as TF Serving's
`http_server.cc` does, so both front ends agree on what went wrong.
"""

from __future__ import annotations

import grpc

# TF Serving's ToHTTPStatusCode (tensorflow_serving/model_servers/http_server.cc).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request failed with a specific gRPC status code.

    Attributes:
        code: the `grpc.StatusCode` to answer with.
        message: a human-readable explanation that says what to change.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API uses for this code."""
        return http_status(self.code)

    def __str__(self) -> str:
        return self.message


def http_status(code: grpc.StatusCode) -> int:
    """Maps a gRPC status code to TF Serving's HTTP status for it."""
    return _HTTP_STATUS.get(code, 500)


def error_code_number(code: grpc.StatusCode) -> int:
    """The numeric `tensorflow.error.Code` (same numbering as gRPC) of a code."""
    return code.value[0]


def invalid_argument(message: str) -> ServingError:
    """Shorthand for an INVALID_ARGUMENT error."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    """Shorthand for a NOT_FOUND error."""
    return ServingError(grpc.StatusCode.NOT_FOUND, message)
