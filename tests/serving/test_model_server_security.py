"""TLS and the shared bearer token, against real servers on 127.0.0.1.

Certificates are self-signed ones made per module (tests/support/tls.py); the models are
tests/support/client_models.py's retrieval + ranking, so RecommenderClient and `recsys
recommend` are exercised over TLS too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.support.client_models import save_models
from tests.support.tls import make_self_signed
from serving import names
from serving.client import RecommenderClient, RecommenderError
from serving.model_server import ConfigError, ModelServer, TlsOptions, read_prediction_logs, read_token_file
from serving.model_server.cli import main as serve_main
from serving.recommend_cli import main as recommend_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "s3cret-T0ken_for-tests"
GOOD = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("security")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    return {
        "root": root,
        "config": save_models(str(root / "models")),
        "server": make_self_signed(str(root / "certs"), "server"),
        "client": make_self_signed(str(root / "certs"), "client"),
        "stranger": make_self_signed(str(root / "certs"), "stranger"),
        "token_file": str(token_file),
    }


@pytest.fixture(scope="module")
def secure(files):
    """A server with TLS and a token on gRPC and REST."""
    server = ModelServer(files["config"], poll_interval_s=5.0, auth_token=TOKEN,
                         tls=TlsOptions(files["server"].cert, files["server"].key))
    server.start()
    try:
        server.wait_until_available(120)
        yield server
    finally:
        server.stop(grace_s=0.5)


def _status_request(model: str = names.RANKING_MODEL):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    return request


def _channel(server: ModelServer, root: bytes | None = None, client=None) -> grpc.Channel:
    if root is None:
        return grpc.insecure_channel(server.grpc_address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client.read_key() if client else None,
        certificate_chain=client.read_cert() if client else None)
    return grpc.secure_channel(server.grpc_address, credentials)


def _rpc_error(call, request, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10, **kwargs)
    return info.value


def _https(url: str, context: ssl.SSLContext | None, token: str | None = None,
           body: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request; raises on TLS/connection failures."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def _ca_context(files, client=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["server"].cert)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


# -- TLS + token server -----------------------------------------------------------------


def test_grpc_over_tls_with_the_token_works_and_plaintext_or_an_unknown_ca_fails(secure, files):
    with _channel(secure, files["server"].read_cert()) as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            _status_request(), timeout=10, metadata=GOOD)
        assert status.model_version_status[0].version == 1
    with _channel(secure) as channel:  # plaintext to a TLS port
        error = _rpc_error(model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus, _status_request(),
                           metadata=GOOD)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    with _channel(secure, files["stranger"].read_cert()) as channel:  # server certificate not trusted
        error = _rpc_error(model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus, _status_request(),
                           metadata=GOOD)
        assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("metadata, fragment", [
    ((), "missing credentials: this server requires a token; send 'authorization: Bearer <token>'"),
    ((("authorization", "Bearer wrong"),), "invalid credentials: the bearer token does not match"),
    ((("authorization", f"Bearer {TOKEN}x"),), "invalid credentials"),
    ((("authorization", f"Basic {TOKEN}"),), "malformed authorization value: expected 'Bearer <token>'"),
    ((("authorization", "Bearer"),), "malformed authorization value"),
])
def test_grpc_calls_without_the_right_token_are_unauthenticated(secure, files, metadata, fragment):
    request = model_management_pb2.ReloadConfigRequest()  # an admin call: would unload every model
    with _channel(secure, files["server"].read_cert()) as channel:
        stubs = (prediction_service_pb2_grpc.PredictionServiceStub(channel),
                 model_service_pb2_grpc.ModelServiceStub(channel))
        for call, message in [(stubs[0].Predict, predict_pb2.PredictRequest()), (stubs[1].GetModelStatus, _status_request()),
                              (stubs[1].HandleReloadConfigRequest, request)]:
            error = _rpc_error(call, message, metadata=metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert fragment in error.details()
            assert TOKEN not in error.details()
    assert secure.wait_until_available(1) is None  # the reload was refused: models still serve


def test_rest_over_https_needs_the_ca_and_the_token(secure, files):
    url = secure.rest_url
    assert url.startswith("https://")
    context = _ca_context(files)
    status, body, _ = _https(f"{url}/v1/models/{names.RANKING_MODEL}", context, TOKEN)
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    predict = {"signature_name": names.POPULAR_SIGNATURE, "instances": [{"k": 2}]}
    status, body, _ = _https(f"{url}/v1/models/{names.RETRIEVAL_MODEL}:predict", context, TOKEN, predict)
    assert status == 200 and body["predictions"][0]["item_ids"] == ["i10", "i11"]

    for token, fragment in [(None, "missing credentials"), ("wrong", "invalid credentials")]:
        status, body, headers = _https(f"{url}/v1/models/{names.RETRIEVAL_MODEL}:predict", context, token, predict)
        assert status == 401 and fragment in body["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
    # Health stays open for probes.
    status, body, _ = _https(f"{url}/healthz", context)
    assert status == 200 and body["status"] == "ok"

    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _https(f"{url}/healthz", ssl.create_default_context())  # the system CAs do not know our certificate
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        _https(url.replace("https://", "http://") + "/healthz", None)  # plaintext to the TLS port


def test_refused_calls_are_counted(secure, files):
    def count(endpoint: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{secure.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        match = re.search(rf'recsys_model_server_auth_failures_total{{endpoint="{endpoint}"}} (\S+)', text)
        return float(match[1]) if match else 0.0

    before = count("grpc"), count("rest")
    with _channel(secure, files["server"].read_cert()) as channel:
        _rpc_error(model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus, _status_request())
    _https(f"{secure.rest_url}/v1/models/{names.RANKING_MODEL}", _ca_context(files))
    assert (count("grpc"), count("rest")) == (before[0] + 1, before[1] + 1)


def test_recommender_client_and_cli_with_tls_and_token(secure, files, capsys):
    ca = files["server"].cert
    with RecommenderClient(secure.grpc_address, timeout_s=10, root_cert_file=ca, token=TOKEN) as client:
        assert len(client.recommend("u1", k=3)) == 3
    with RecommenderClient(secure.grpc_address, timeout_s=10, root_cert_file=ca) as client:
        with pytest.raises(RecommenderError) as info:
            client.recommend("u1", k=3)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and info.value.attempts == 1
    with pytest.raises(ValueError, match="cannot read root_cert_file"):
        RecommenderClient(secure.grpc_address, root_cert_file=str(files["root"] / "missing.pem"))

    args = ["--user", "u1", "--k", "3", "--target", secure.grpc_address, "--json", "--timeout", "10"]
    assert recommend_main(args + ["--root-cert-file", ca, "--token-file", files["token_file"]]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert recommend_main(args + ["--root-cert-file", ca]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert recommend_main(args + ["--root-cert-file", ca, "--token-file", str(files["root"] / "nope")]) == 2
    assert "cannot read --token-file" in capsys.readouterr().err


# -- other configurations ---------------------------------------------------------------------


def test_token_without_tls_on_loopback(files):
    with ModelServer(files["config"], metrics_port=None, poll_interval_s=5.0, auth_token=TOKEN) as server:
        server.wait_until_available(120)
        with _channel(server) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            assert stub.GetModelStatus(_status_request(), timeout=10, metadata=GOOD).model_version_status
            assert _rpc_error(stub.GetModelStatus, _status_request()).code() == grpc.StatusCode.UNAUTHENTICATED
        assert server.rest_url.startswith("http://")
        assert _https(f"{server.rest_url}/v1/models/{names.RANKING_MODEL}", None, TOKEN)[0] == 200
        assert _https(f"{server.rest_url}/v1/models/{names.RANKING_MODEL}", None)[0] == 401


def test_mutual_tls_requires_a_client_certificate_from_the_ca(files):
    tls = TlsOptions(files["server"].cert, files["server"].key, client_ca_file=files["client"].cert)
    with ModelServer(files["config"], metrics_port=None, poll_interval_s=5.0, tls=tls) as server:
        server.wait_until_available(120)
        root = files["server"].read_cert()
        for client, ok in [(files["client"], True), (None, False), (files["stranger"], False)]:
            with _channel(server, root, client) as channel:
                stub = model_service_pb2_grpc.ModelServiceStub(channel)
                if ok:
                    assert stub.GetModelStatus(_status_request(), timeout=10).model_version_status
                else:
                    assert _rpc_error(stub.GetModelStatus, _status_request()).code() == grpc.StatusCode.UNAVAILABLE
        url = f"{server.rest_url}/v1/models/{names.RANKING_MODEL}"
        assert _https(url, _ca_context(files, files["client"]))[0] == 200
        for client in (None, files["stranger"]):
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                _https(url, _ca_context(files, client))


def test_tls_and_token_errors_are_clear_at_startup(files, tmp_path, capsys):
    server, client = files["server"], files["client"]
    with pytest.raises(ConfigError, match="cert_file .* does not exist"):
        TlsOptions(str(tmp_path / "missing.crt"), server.key)
    with pytest.raises(ConfigError, match="cannot load TLS certificate .* key matching the certificate"):
        TlsOptions(server.cert, client.key)
    encrypted = make_self_signed(str(tmp_path), "encrypted", password=b"pw")
    with pytest.raises(ConfigError, match="private key is encrypted"):
        TlsOptions(encrypted.cert, encrypted.key)
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load TLS client CA file"):
        TlsOptions(server.cert, server.key, client_ca_file=str(not_pem))

    empty = tmp_path / "empty_token"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_token_file(empty)
    with pytest.raises(ConfigError, match="cannot read auth token file"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(ConfigError, match="one non-empty word"):
        ModelServer(files["config"], auth_token="two words")

    base = ["--model_config_file", files["config"], "--port", "0"]
    for flags, message in [
        (["--ssl_cert_file", server.cert], "TLS needs both --ssl_cert_file and --ssl_key_file"),
        (["--ssl_cert_file", server.cert, "--ssl_key_file", client.key], "cannot load TLS certificate"),
        (["--auth_token_file", str(empty)], "is empty"),
    ]:
        assert serve_main(base + flags) == 2
        assert message in capsys.readouterr().err


def test_cli_serves_tls_token_and_request_logs(files, tmp_path):
    """`python -m serving.model_server` with every new flag, as a real process."""
    log_dir = tmp_path / "request_logs"
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.model_server", "--model_config_file", files["config"], "--port", "0",
         "--rest_api_port", "auto", "--monitoring_port", "none", "--log_level", "WARNING",
         "--ssl_cert_file", files["server"].cert, "--ssl_key_file", files["server"].key,
         "--auth_token_file", files["token_file"], "--request_log_dir", str(log_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    lines, found = [], {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(found) < 4:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            for key, pattern in [("grpc", r"gRPC listening on (\S+) \(TLS\)"), ("rest", r"REST listening on (https://\S+)"),
                                 ("token", r"(bearer token required)"),
                                 ("loaded", rf"loaded model ({names.RANKING_MODEL}) version 1")]:
                if m := re.search(pattern, line):
                    found[key] = m[1]
        assert len(found) == 4, "".join(lines)
        assert TOKEN not in "".join(lines)
        deadline = time.monotonic() + 60
        while _https(found["rest"] + "/healthz", _ca_context(files))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        with RecommenderClient(found["grpc"], timeout_s=10, root_cert_file=files["server"].cert, token=TOKEN) as c:
            recs = c.recommend("u1", k=2)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0, "".join(lines) + out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logged = list(read_prediction_logs(str(log_dir)))
    models = {e.log_metadata.model_spec.name for e in logged}
    assert models == {names.RETRIEVAL_MODEL, names.RANKING_MODEL}
    assert len(recs) == 2
