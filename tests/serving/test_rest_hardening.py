"""The REST front end as an adversarial client meets it, over raw sockets on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from serving import names
from serving.model_server import ModelServer
from tests.support.model_servers import make_base
from tests.support.request_surface import connect, http, read_all, read_response, status_lines

TIMEOUT_S = 1.0
TOKEN = "s3cret-token"
MAX_BODY = 1024 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, templates):
    tmp = tmp_path_factory.mktemp("rest")
    base = make_base(tmp, templates, "rec", [1])
    config = tmp / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "rec" base_path: "{base}" model_platform: "tensorflow" }} }}')
    with ModelServer(str(config), grpc_port=None, rest_port=0, metrics_port=None, auth_token=TOKEN,
                     max_message_size_bytes=MAX_BODY, rest_timeout_s=TIMEOUT_S) as s:
        s.wait_until_available(60)
        yield s


def _predict_body(k: int = 1) -> bytes:
    return json.dumps({"instances": [{"user_id": "u", "k": k}]}).encode()


def _request(path: str, body: bytes = b"", headers: dict | None = None, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", f"Authorization: Bearer {TOKEN}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except (socket.timeout, TimeoutError):
        return False


def test_predict_with_content_length_and_keep_alive(server):
    with connect(server.rest_port) as sock:
        for _ in range(2):  # two requests on one connection
            sock.sendall(_request("/v1/models/rec:predict", _predict_body(),
                                  {"Content-Length": len(_predict_body()), "Content-Type": "application/json"}))
            status, body = read_response(sock)
            assert status == 200 and json.loads(body)["predictions"][0][names.OUT_SCORES] == [100.0]


def test_half_open_and_idle_connections_are_closed_after_the_timeout(server):
    # Half-open: headers never finished; idle: a keep-alive connection after one request.
    half_open = connect(server.rest_port)
    half_open.sendall(b"POST /v1/models/rec:predict HTTP/1.1\r\nContent-Length: 100\r\n")
    idle = connect(server.rest_port)
    idle.sendall(_request("/v1/models/rec", method="GET"))
    assert read_response(idle)[0] == 200
    slow_body = connect(server.rest_port)
    slow_body.sendall(_request("/v1/models/rec:predict", b'{"inst', {"Content-Length": 100}))
    start = time.monotonic()
    for sock in (half_open, idle, slow_body):
        assert _closed_within(sock, TIMEOUT_S + 3)
        sock.close()
    assert time.monotonic() - start < TIMEOUT_S + 3


def test_a_trickling_client_is_closed_after_the_timeout(server):
    # Each byte comes well within the per-read timeout; the whole request does not.
    with connect(server.rest_port) as sock:
        start = time.monotonic()
        closed = False
        for byte in b"GET /v1/models/rec HTTP/1.1\r\nX-Slow: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            sock.settimeout(TIMEOUT_S / 4)
            try:
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except (socket.timeout, TimeoutError):
                pass
            except ConnectionResetError:
                closed = True
                break
        assert closed and time.monotonic() - start < TIMEOUT_S + 1.5


def test_many_half_open_connections_do_not_keep_threads(server):
    before = threading.active_count()
    socks = [connect(server.rest_port) for _ in range(60)]
    for sock in socks:
        sock.sendall(b"GET /v1/models/rec HTTP/1.1\r\n")
    time.sleep(0.3)
    assert threading.active_count() >= before + 50  # one thread per connection while open
    deadline = time.monotonic() + TIMEOUT_S + 5
    while threading.active_count() > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= before + 2
    for sock in socks:
        sock.close()


def test_unauthenticated_body_is_refused_before_it_is_sent(server):
    # 60 MiB announced, nothing sent: the 401 comes at once, not after the body.
    with connect(server.rest_port) as sock:
        sock.sendall(b"POST /v1/models/rec:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 62914560\r\n\r\n")
        start = time.monotonic()
        answer = read_all(sock, timeout=TIMEOUT_S + 3)
        assert status_lines(answer) == ["HTTP/1.1 401 Unauthorized"]
        assert time.monotonic() - start < TIMEOUT_S + 1.5
    # Expect: 100-continue gets the final answer instead of "100 Continue".
    with connect(server.rest_port) as sock:
        sock.sendall(b"POST /v1/models/rec:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert status_lines(read_all(sock, timeout=3)) == ["HTTP/1.1 401 Unauthorized"]


def test_oversized_body_refused_from_content_length(server):
    with connect(server.rest_port) as sock:
        sock.sendall(_request("/v1/models/rec:predict", b"{", {"Content-Length": MAX_BODY + 1}))
        answer = read_all(sock, timeout=3)
    assert status_lines(answer) == ["HTTP/1.1 413 Request Entity Too Large"]
    assert b"--max_message_size_mb" in answer


def test_chunked_body_is_decoded(server):
    body = _predict_body(2)
    chunked = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    with connect(server.rest_port) as sock:
        sock.sendall(_request("/v1/models/rec:predict", chunked, {"Transfer-Encoding": "chunked", "Connection": "close"}))
        answer = read_all(sock)
    assert status_lines(answer) == ["HTTP/1.1 200 OK"]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["predictions"][0][names.OUT_ITEM_IDS] == ["u/0", "u/1"]


def test_chunked_body_over_the_limit_is_refused(server):
    chunk = b"x" * (MAX_BODY // 2 + 1)
    with connect(server.rest_port) as sock:
        sock.sendall(_request("/v1/models/rec:predict", b"", {"Transfer-Encoding": "chunked"}))
        try:
            for _ in range(2):
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:
            pass
        assert status_lines(read_all(sock))[:1] == ["HTTP/1.1 413 Request Entity Too Large"]


@pytest.mark.parametrize("headers, status", [
    ({"Transfer-Encoding": "chunked", "Content-Length": "4"}, "400"),
    ({"Content-Length": ["4", "40"]}, "400"),
    ({"Content-Length": "-4"}, "400"),
    ({"Transfer-Encoding": "gzip"}, "501"),
])
def test_request_smuggling_is_refused_and_the_hidden_request_not_answered(server, headers, status):
    hidden = b"GET /v1/models/rec HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
    lines = [b"POST /v1/models/rec:predict HTTP/1.1", b"Host: t", f"Authorization: Bearer {TOKEN}".encode()]
    for key, value in headers.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key}: {v}".encode())
    with connect(server.rest_port) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + b"0\r\n\r\n" + hidden)
        answers = status_lines(read_all(sock))
    assert len(answers) == 1 and answers[0].split()[1] == status


def test_client_disconnects_cost_no_traceback(server, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="serving.model_server")
    for payload in (
        _request("/v1/models/rec:predict", b'{"inst', {"Content-Length": 500}),  # body cut short
        _request("/v1/models/rec:predict", b"", {"Transfer-Encoding": "chunked"}) + b"10\r\nabc",  # chunk cut short
        _request("/v1/models/rec:predict", _predict_body(), {"Content-Length": len(_predict_body())}),  # no read
    ):
        sock = connect(server.rest_port)
        sock.sendall(payload)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset on close
        sock.close()
    time.sleep(0.5)
    assert http(f"{server.rest_url}/v1/models/rec", headers=AUTH)[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("path, body", [
    ("/v1/models/rec:predict", b"[" * 200_000 + b"]" * 200_000),
    ("/v1/models/rec:predict", b'{"instances": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}"),
    ("/v1/models/rec:predict", b'{"inputs": {"user_id": ' + b"[" * 900 + b'"a"' + b"]" * 900 + b', "k": [1]}}'),
    ("/v1/models/rec/versions/99999999999999999999:predict", _predict_body()),
    ("/v1/models/rec/versions/-1:predict", _predict_body()),
    ("/v1/models/rec:predict", b'{"instances": "abc"}'),
    ("/v1/models/rec:predict", b'{"instances": [{"user_id": {"x": 1}, "k": 1}]}'),
    ("/v1/models/rec:predict", b'{"signature_name": 5, "instances": [1]}'),
    ("/v1/models/rec:predict", b'{"inputs": 5}'),
    ("/v1/models/rec:predict", b'{"inputs": {"user_id": ["a"], "k": [true]}}'),
    ("/v1/models/rec:predict", b'{"inputs": {"user_id": ["a"], "k": [99999999999999999999999]}}'),
    ("/v1/models/rec:predict", b'{"inputs": {"user_id": [1], "k": [1]}}'),
    ("/v1/models/rec:predict", b"\xff\xfe"),
    ("/v1/models/rec:predict", b""),
    ("/v1/models/rec/labels/%ZZ:predict", _predict_body()),
])
def test_malformed_input_is_400_with_a_clean_message(server, path, body):
    status, payload = http(server.rest_url + path, body, headers=AUTH)
    assert status == 400, payload
    assert "error" in payload and "Traceback" not in payload["error"] and "internal" not in payload["error"]


def test_connection_cap_answers_503_past_it(tmp_path, templates):
    base = make_base(tmp_path, templates, "rec", [1])
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "rec" base_path: "{base}" model_platform: "tensorflow" }} }}')
    with ModelServer(str(config), grpc_port=None, rest_port=0, metrics_port=None, rest_timeout_s=4.0,
                     rest_max_connections=2) as server:
        server.wait_until_available(60)
        # Two slow clients (a header byte every 0.3 s) hold both slots for up to the 4 s timeout.
        holders = [connect(server.rest_port) for _ in range(2)]
        stop = threading.Event()

        def trickle(sock):
            for byte in b"GET /v1/models/rec HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                if stop.wait(0.3):
                    return
                sock.sendall(bytes([byte]))

        threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in holders]
        for t in threads:
            t.start()
        time.sleep(0.5)
        start = time.monotonic()
        with connect(server.rest_port) as third:
            third.sendall(b"GET /v1/models/rec HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status_lines(read_all(third, timeout=5)) == ["HTTP/1.1 503 Service Unavailable"]
        assert 0.8 < time.monotonic() - start < 3  # rest_http.SLOT_WAIT_S
        stop.set()
        for sock in holders:
            sock.close()
        # The slots come back.
        deadline = time.monotonic() + 5
        while http(f"{server.rest_url}/v1/models/rec")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
