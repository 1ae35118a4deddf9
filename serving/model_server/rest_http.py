"""The HTTP/1.1 connection layer under the REST API (standard library http.server).

What http.server lacks and a public endpoint needs, hand-written here:

* read and idle timeouts (--rest_api_timeout_in_ms, TF Serving's default 30 s):
  every socket read waits at most `timeout_s`, and a request must arrive whole
  (request line, headers, body) within `timeout_s` of the connection going idle,
  else a watchdog thread shuts the socket down; so half-open, idle and
  byte-trickling connections are closed and their threads freed;
* at most `max_connections` connections served at once (--rest_api_num_threads);
  past it a new connection waits up to SLOT_WAIT_S for a slot, then gets 503;
* framing checked before any body byte is read: Transfer-Encoding together with
  Content-Length, several different Content-Lengths, or a non-numeric one get 400
  and the connection is closed (no request smuggling); `Transfer-Encoding:
  chunked` is decoded (any other coding: 501);
* authentication and the body-size limit checked before the body is read (also
  for `Expect: 100-continue`, which gets the final answer instead of 100): the
  refusal is sent, at most DRAIN_BYTES of the unread body are discarded so the
  client can read it, and the connection is closed;
* a client that disconnects or times out costs one debug line, not a traceback.
"""

from __future__ import annotations

import http.server
import json
import logging
import re
import socket
import ssl
import sys
import threading
import time

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0  # TF Serving's --rest_api_timeout_in_ms default
DRAIN_BYTES = 1024 * 1024
DRAIN_TIMEOUT_S = 1.0
TLS_HANDSHAKE_TIMEOUT_S = 10.0
SLOT_WAIT_S = 1.0
_REAPER_PERIOD_S = 0.1
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DISCONNECTS = (ConnectionError, TimeoutError, socket.timeout, ssl.SSLError)


# Names the worker of a multi-process server (--num_workers) that answered; also gRPC metadata.
WORKER_HEADER = "x-model-server-worker"


class Refusal(Exception):
    """A request refused before (or while) its body is read: status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Reaper:
    """Shuts down sockets whose request did not arrive in time (one thread per server).

    Socket timeouts bound each read; this bounds the whole request, which a client
    sending a byte just inside every timeout would otherwise stretch forever.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rest-reaper", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket, deadline: float) -> None:
        with self._lock:
            self._deadlines[sock] = deadline

    def unwatch(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(sock, None)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(_REAPER_PERIOD_S):
            now = time.monotonic()
            with self._lock:
                late = [sock for sock, deadline in self._deadlines.items() if deadline <= now]
                for sock in late:
                    del self._deadlines[sock]
            for sock in late:
                try:  # the plain socket call: an SSLSocket's own shutdown() would unwrap it under the reader
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


class _ServerMixin:
    """Connection cap and quiet disconnects, for the plain and the TLS server."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # listen backlog (socketserver's 5 makes bursts of clients wait for SYN retries)
    max_connections: int | None = None
    reuse_port = False  # SO_REUSEPORT: the workers of a multi-process server share the port (Linux)

    def server_bind(self):
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def server_activate(self):
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections) if self.max_connections else None
        self.reaper = _Reaper()

    def server_close(self):
        super().server_close()
        if hasattr(self, "reaper"):
            self.reaper.close()

    def process_request(self, request, client_address):
        if self._slots is not None and not self._slots.acquire(timeout=SLOT_WAIT_S):
            log.info("REST: %d connections busy; refusing %s", self.max_connections, client_address[0])
            _send_raw(request, 503, "the server is at --rest_api_num_threads connections; retry")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self._slots is not None:
                self._slots.release()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, _DISCONNECTS):
            log.debug("REST: connection from %s ended: %s", client_address[0], error or type(error).__name__)
        else:
            log.exception("REST: unexpected error on a connection from %s", client_address[0])


class PlainServer(_ServerMixin, http.server.ThreadingHTTPServer):
    """HTTP."""


class TlsServer(_ServerMixin, http.server.ThreadingHTTPServer):
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
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


def _send_raw(sock: socket.socket, status: int, message: str) -> None:
    """A minimal response written straight to a socket (no handler thread), best effort."""
    body = json.dumps({"error": message}).encode()
    try:
        sock.settimeout(0.5)
        sock.sendall(f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    except OSError:
        pass


class Handler(http.server.BaseHTTPRequestHandler):
    """Reads one request at a time; subclasses set `api` (rest.RestApi) and `timeout`.

    `api.admit(method, path, headers)` raises Refusal for a request to refuse before
    its body; `api.respond(method, path, body, deadline)` returns (status, payload
    dict or (content type, bytes)).
    """

    protocol_version = "HTTP/1.1"
    server_version = "recsys-model-server"
    api = None
    max_body_bytes = 64 * 1024 * 1024
    worker_index: int | None = None  # sent as WORKER_HEADER by a worker of a multi-process server
    _admitted = False

    def end_headers(self):
        if self.worker_index is not None:
            self.send_header(WORKER_HEADER, str(self.worker_index))
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 - stderr stays quiet; metrics count requests
        log.debug("REST %s %s", self.address_string(), format % args)

    def setup(self):
        super().setup()
        self.timeout_s = self.timeout

    def handle_one_request(self):
        # The whole request (from idle to the end of its body) must arrive within the timeout.
        if self.timeout_s:
            self.server.reaper.watch(self.connection, time.monotonic() + self.timeout_s)
        try:
            super().handle_one_request()
        finally:
            self.server.reaper.unwatch(self.connection)

    # -- before the body -------------------------------------------------------------

    def handle_expect_100(self):
        try:
            self._admit()
        except Refusal as refusal:
            self._refuse(refusal, drain=False)
            return False
        return super().handle_expect_100()

    def _admit(self) -> None:
        """Framing, credentials and size, from the headers alone; sets the body reader."""
        if self._admitted:
            return
        codings = [c.strip().lower() for v in self.headers.get_all("Transfer-Encoding") or [] for c in v.split(",")]
        lengths = [v.strip() for v in self.headers.get_all("Content-Length") or []]
        self._chunked, self._length = False, 0
        if codings:
            if lengths:
                raise Refusal(400, "both Transfer-Encoding and Content-Length are set; send one of them")
            if codings != ["chunked"]:
                raise Refusal(501, f"Transfer-Encoding {', '.join(codings)} is not supported; "
                                   "send Content-Length or Transfer-Encoding: chunked")
            self._chunked = True
        elif lengths:
            if len(set(lengths)) > 1 or not lengths[0].isdigit():
                raise Refusal(400, f"bad Content-Length header {lengths}")
            self._length = int(lengths[0])
        self.api.admit(self.command, self.path, self.headers)
        if self._length > self.max_body_bytes:
            raise Refusal(413, f"request body of {self._length} bytes exceeds the {self.max_body_bytes} byte "
                               "limit (--max_message_size_mb)")
        self._admitted = True

    def _refuse(self, refusal: Refusal, drain: bool = True) -> None:
        """Answers and closes; the unread body (up to DRAIN_BYTES) is discarded first so the
        client is not reset before it reads the answer."""
        self.close_connection = True
        self._reply(refusal.status, {"error": refusal.message}, {**refusal.headers, "Connection": "close"})
        if drain and (self._chunked or self._length):
            try:
                self.connection.settimeout(DRAIN_TIMEOUT_S)
                left = min(DRAIN_BYTES, self._length) if not self._chunked else DRAIN_BYTES
                while left > 0 and (chunk := self.rfile.read1(min(left, 65536))):
                    left -= len(chunk)
            except OSError:
                pass

    # -- the body --------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if not self._chunked:
            body = self.rfile.read(self._length) if self._length else b""
            if len(body) < self._length:
                raise ConnectionError("client closed the connection before sending the whole body")
            return body
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("client closed the connection inside a chunked body")
            size = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not _CHUNK_SIZE.fullmatch(size):
                raise Refusal(400, "malformed chunk in a Transfer-Encoding: chunked body")
            size = int(size, 16)
            if size == 0:
                break
            total += size
            if total > self.max_body_bytes:
                raise Refusal(413, f"chunked request body exceeds the {self.max_body_bytes} byte limit "
                                   "(--max_message_size_mb)")
            data = self.rfile.read(size)
            if len(data) < size:
                raise ConnectionError("client closed the connection inside a chunk")
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise Refusal(400, "malformed chunk in a Transfer-Encoding: chunked body")
            parts.append(data)
        for _ in range(100):  # trailer fields: read and ignored
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                break
        else:
            raise Refusal(400, "too many trailer fields after a chunked body")
        return b"".join(parts)

    # -- answering -------------------------------------------------------------------

    def _reply(self, status: int, payload, headers: dict | None = None) -> None:
        if isinstance(payload, tuple):
            content_type, data = payload
        else:
            content_type, data = "application/json", json.dumps(payload, allow_nan=True).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _serve(self) -> None:
        self._admitted = False
        deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        try:
            self._admit()
            body = self._read_body()
        except Refusal as refusal:
            self.server.reaper.unwatch(self.connection)
            self._refuse(refusal)
            return
        self.server.reaper.unwatch(self.connection)  # arrived: the request's own deadline takes over
        status, payload = self.api.respond(self.command, self.path, body, deadline)
        self._reply(status, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve
