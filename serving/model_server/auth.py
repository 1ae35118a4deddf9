"""Shared bearer-token check for the gRPC and REST endpoints (--auth_token_file).

Off by default. When on, every gRPC call must carry the metadata
`authorization: Bearer <token>` and every REST request the header
`Authorization: Bearer <token>`, else the call is refused with UNAUTHENTICATED
(HTTP 401) before the request is parsed or run. `GET /healthz` stays open so probes need no
secret; the Prometheus port is not covered (firewall it, or --monitoring_port none).
Tokens are compared with hmac.compare_digest. The token comes from a file so it
never appears on a command line (`ps`); send it over TLS only.

ModelService/HandleReloadConfigRequest (which loads models from any path the
server can read) needs its own credential, `--admin_token_file` (AdminPolicy):
with one, the call must carry `authorization: Bearer <admin token>` (the client
token is not enough: PERMISSION_DENIED); without one, reloads are refused
(PERMISSION_DENIED) unless the server binds a loopback address only.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

import grpc

from serving.model_server.config import ConfigError
from serving.model_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"  # gRPC metadata keys are lower case; HTTP headers are case-insensitive
SCHEME = "bearer"
HOW_TO = "send 'authorization: Bearer <token>' (gRPC metadata or HTTP header)"


def read_token_file(path: str | os.PathLike) -> str:
    """The token in `path` (surrounding whitespace stripped).

    Raises:
        ConfigError: the file cannot be read, is empty, or holds more than one word.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read auth token file {path!r}: {e}") from e
    if not token:
        raise ConfigError(f"auth token file {path!r} is empty; write the shared token into it")
    if mode & 0o077:
        log.warning("auth token file %s is readable by group/others; chmod 600 it", path)
    return token


def authorization_of(metadata) -> str | None:
    """The `authorization` value in gRPC invocation metadata (None: absent)."""
    value = next((v for k, v in metadata or () if k == METADATA_KEY), None)
    return value if isinstance(value, str) else None


class TokenAuth:
    """Checks `Authorization: Bearer <token>` values against the shared token."""

    def __init__(self, token: str):
        if not token or not token.isprintable() or any(c.isspace() for c in token):
            raise ConfigError("the auth token must be one non-empty word of printable characters")
        self._token = token.encode("utf-8")

    def check(self, value: str | None) -> str | None:
        """None when `value` (the authorization header/metadata) carries the token, else why not."""
        if not value:
            return f"missing credentials: this server requires a token; {HOW_TO}"
        scheme, _, given = value.strip().partition(" ")
        if scheme.lower() != SCHEME or not given.strip():
            return f"malformed authorization value: expected 'Bearer <token>'; {HOW_TO}"
        if not hmac.compare_digest(given.strip().encode("utf-8"), self._token):
            return "invalid credentials: the bearer token does not match the server's token"
        return None


RELOAD_METHOD = "/tensorflow.serving.ModelService/HandleReloadConfigRequest"


def is_loopback(host: str) -> bool:
    """True when binding `host` reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AdminPolicy:
    """Who may call HandleReloadConfigRequest.

    Args:
        token: the admin token (--admin_token_file), or None.
        host: the address the server binds; without a token, reloads are allowed
            only when it is loopback.
    """

    def __init__(self, token: str | None, host: str):
        self._auth = TokenAuth(token) if token is not None else None
        self.host = host
        self.has_token = token is not None

    def check(self, authorization: str | None) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may reload, else (code, message)."""
        if self._auth is None:
            if is_loopback(self.host):
                return None
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"HandleReloadConfigRequest is disabled: the server binds {self.host}, not loopback only, and "
                    "has no admin credential; start it with --admin_token_file (or bind 127.0.0.1)")
        if not authorization:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "HandleReloadConfigRequest needs the admin token (--admin_token_file): send "
                    "'authorization: Bearer <admin token>'")
        if self._auth.check(authorization) is not None:
            return (grpc.StatusCode.PERMISSION_DENIED,
                    "HandleReloadConfigRequest needs the admin token (--admin_token_file); these credentials "
                    "are not it")
        return None


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses gRPC calls without the right bearer token (UNAUTHENTICATED).

    HandleReloadConfigRequest is left to the service's AdminPolicy when an admin
    token is configured (it carries the admin token, not the client token).
    """

    def __init__(self, auth: TokenAuth, metrics: ServerMetrics, admin: AdminPolicy | None = None):
        self._auth = auth
        self._metrics = metrics
        self._admin = admin

    def intercept_service(self, continuation, handler_call_details):
        if self._admin is not None and self._admin.has_token and handler_call_details.method == RELOAD_METHOD:
            return continuation(handler_call_details)
        value = next((v for k, v in handler_call_details.invocation_metadata or () if k == METADATA_KEY), None)
        error = self._auth.check(value if isinstance(value, str) else None)
        if error is None:
            return continuation(handler_call_details)
        self._metrics.auth_failures.labels("grpc").inc()

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, error)

        return grpc.unary_unary_rpc_method_handler(refuse)  # every service here is unary-unary
