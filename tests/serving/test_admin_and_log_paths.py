"""HandleReloadConfigRequest needs its own credential; request logs stay in allowed directories."""

from __future__ import annotations

import os

import grpc
import pytest
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.model_server import ModelServer, RequestLoggingOptions, parse_model_server_config
from serving.model_server.cli import main as serve_main
from tests.support.model_servers import make_base, recommend_request

CLIENT, ADMIN = "client-token", "admin-token"


def _entry(base: str, extra: str = "") -> str:
    return f'config {{ name: "rec" base_path: "{base}" model_platform: "tensorflow" {extra} }}'


def _config(base: str, extra: str = ""):
    return parse_model_server_config(f"model_config_list {{ {_entry(base, extra)} }}")


def _reload(server: ModelServer, config, token: str | None = None, address: str | None = None):
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address or server.grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        return stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                              metadata=metadata, timeout=60)


def _reload_error(*args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _reload(*args, **kwargs)
    return info.value


@pytest.fixture(scope="module")
def base(tmp_path_factory, templates):
    return make_base(tmp_path_factory.mktemp("admin"), templates, "rec", [1])


def test_reload_needs_the_admin_token_not_the_client_token(base):
    with ModelServer(_config(base), rest_port=None, metrics_port=None, auth_token=CLIENT, admin_token=ADMIN) as server:
        server.wait_until_available(60)
        e = _reload_error(server, _config(base), CLIENT)
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "--admin_token_file" in e.details()
        e = _reload_error(server, _config(base))
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "admin token" in e.details()
        e = _reload_error(server, _config(base), "guess")
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _reload(server, _config(base), ADMIN).status.error_code == 0
        # The admin token is not a client token.
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(recommend_request("rec"), metadata=[("authorization", f"Bearer {ADMIN}")], timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stub.Predict(recommend_request("rec"), metadata=[("authorization", f"Bearer {CLIENT}")], timeout=10)


def test_admin_token_without_a_client_token(base):
    with ModelServer(_config(base), rest_port=None, metrics_port=None, admin_token=ADMIN) as server:
        server.wait_until_available(60)
        assert _reload_error(server, _config(base)).code() == grpc.StatusCode.UNAUTHENTICATED
        assert _reload(server, _config(base), ADMIN).status.error_code == 0


def test_without_an_admin_token_reloads_only_on_loopback(base):
    with ModelServer(_config(base), rest_port=None, metrics_port=None) as server:  # 127.0.0.1
        server.wait_until_available(60)
        assert _reload(server, _config(base)).status.error_code == 0
    with ModelServer(_config(base), rest_port=None, metrics_port=None, host="0.0.0.0") as server:
        server.wait_until_available(60)
        e = _reload_error(server, _config(base), address=f"127.0.0.1:{server.grpc_port}")
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--admin_token_file" in e.details() and "0.0.0.0" in e.details()


def _logging(prefix) -> str:
    return (f'logging_config {{ log_collector_config {{ type: "file" filename_prefix: "{prefix}" }} '
            "sampling_config { sampling_rate: 1 } }")


def test_reload_cannot_log_outside_the_allowed_directories(base, tmp_path):
    allowed, elsewhere = tmp_path / "logs", tmp_path / "elsewhere"
    with ModelServer(_config(base), rest_port=None, metrics_port=None,
                     request_logging=RequestLoggingOptions(allowed_dirs=(str(allowed),))) as server:
        server.wait_until_available(60)
        for prefix in (elsewhere / "rec", allowed / ".." / "elsewhere" / "rec"):
            e = _reload_error(server, _config(base, _logging(prefix)))
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "--request_log_allowed_dirs" in e.details() and "outside" in e.details()
        assert not elsewhere.exists()  # refused before any directory was created
        # A symlink inside the allowed directory pointing out of it is resolved, and refused.
        allowed.mkdir()
        os.symlink(elsewhere.parent, allowed / "link")
        e = _reload_error(server, _config(base, _logging(allowed / "link" / "elsewhere" / "rec")))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _reload(server, _config(base, _logging(allowed / "sub" / "rec"))).status.error_code == 0
        assert server.request_logger.targets()["rec"][0] == str(allowed / "sub" / "rec")


def test_without_the_flag_the_startup_directories_are_the_allowed_ones(base, tmp_path):
    start = tmp_path / "start"
    with ModelServer(_config(base, _logging(start / "rec")), rest_port=None, metrics_port=None) as server:
        server.wait_until_available(60)
        assert _reload(server, _config(base, _logging(start / "rec2"))).status.error_code == 0
        e = _reload_error(server, _config(base, _logging(tmp_path / "other" / "rec")))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and str(start) in e.details()


def test_cli_refuses_an_admin_token_equal_to_the_client_token(base, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text(CLIENT)
    config = tmp_path / "models.config"
    config.write_text(f"model_config_list {{ {_entry(base)} }}")
    assert serve_main(["--model_config_file", str(config), "--port", "0", "--auth_token_file", str(token),
                       "--admin_token_file", str(token), "--monitoring_port", "none"]) == 2
    assert "separate" in capsys.readouterr().err
