"""Version lifecycle against a real server on loopback, under a bounded load.

Pushes (atomic and a slow in-place copy), in-place changes, reloads to a byte copy,
to a missing path and to a path with only an incomplete version, rollbacks and
restarts: every fault runs while SteadyLoad sends Predict calls back to back, and
the tests count failed and wrong answers (zero of each), and NOT_FOUND after a
restart once the port accepts connections (zero).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2, model_management_pb2, model_service_pb2_grpc, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from serving import names
from serving.model_server import ModelServer
from serving.model_server.version_files import complete_versions, incomplete_reason, version_dirs
from serving.model_server.version_manager import VersionManager
from tests.support.model_servers import install_version, make_base, recommend_request, wait_for
from tests.support.steady_load import SteadyLoad
from tests.support.vocab_models import check_response, request as vocab_request, save_vocab_model, slow_copy
from tfx_pipeline.rollback import rollback

State = get_model_status_pb2.ModelVersionStatus.State
POLL_S = 0.1


@pytest.fixture(scope="module")
def vocab_templates(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("vocab_templates")
    return {v: save_vocab_model(str(root / f"v{v}"), v) for v in (1, 2)}


def _config(policy: str = "", **bases) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    for name, base in bases.items():
        model = config.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
        if policy == "latest1":
            model.model_version_policy.latest.num_versions = 1
    return config


def _server(config, events=None, **kw) -> ModelServer:
    on_event = (lambda *e: events.append(e)) if events is not None else None
    return ModelServer(config, rest_port=kw.pop("rest_port", None), metrics_port=None, poll_interval_s=POLL_S,
                       on_version_event=on_event, **kw)


def _stubs(server):
    channel = grpc.insecure_channel(server.grpc_address)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel), \
        model_service_pb2_grpc.ModelServiceStub(channel)


def _status(models_stub, name: str) -> dict[int, int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return {s.version: s.state for s in models_stub.GetModelStatus(request, timeout=10).model_version_status}




def _template_answer_ok(response) -> str | None:
    """recommend_request() answers of tests/support/model_servers.py's models: scores col + 100 * version."""
    v = response.model_spec.version.value
    got = list(response.outputs[names.OUT_SCORES].float_val)
    want = [100.0 * v, 100.0 * v + 1, float("-inf"), 100.0 * v, 100.0 * v + 1, 100.0 * v + 2]
    return None if got == want else f"version {v}: scores {got}, want {want}"


# -- The completeness rule -----------------------------------------------------------


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


BREAKAGES = {
    "no graph": (lambda d: os.remove(f"{d}/saved_model.pb"), "saved_model.pb is missing"),
    "truncated graph": (lambda d: _truncate(f"{d}/saved_model.pb"), "does not parse"),
    "no variables index": (lambda d: os.remove(f"{d}/variables/variables.index"), "variables.index is missing"),
    "truncated index": (lambda d: _truncate(f"{d}/variables/variables.index"), "does not open"),
    "missing shard": (lambda d: os.remove(f"{d}/variables/variables.data-00002-of-00004"),
                      "lacks data shard(s) [2] of 4"),
    "no shards": (lambda d: [os.remove(p) for p in Path(d, "variables").glob("variables.data-*")],
                  "no variables.data"),
    "missing asset": (lambda d: os.remove(f"{d}/assets/users.txt"), "['users.txt'] missing from assets/"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_incomplete_saved_models_are_named_with_what_is_missing(tmp_path, vocab_templates, breakage):
    version = shutil.copytree(vocab_templates[1], tmp_path / "1")
    assert incomplete_reason(str(version)) is None
    shutil.copytree(vocab_templates[2], tmp_path / "2")
    damage, reason = BREAKAGES[breakage]
    damage(str(version))
    assert reason in incomplete_reason(str(version))
    assert set(complete_versions(str(tmp_path))) == {2}


def test_version_scan_ignores_temporary_and_non_numeric_names(tmp_path, vocab_templates):
    for name in ("7", ".tmp-8-1234", ".rolled_back-6", "latest", "9.5", "-3", "٣"):
        (tmp_path / name).mkdir()
    (tmp_path / "10").write_text("a file, not a directory")
    assert set(version_dirs(str(tmp_path))) == {7}


# -- Pushes --------------------------------------------------------------------------


def test_slow_in_place_copy_is_served_only_once_complete(tmp_path, vocab_templates):
    """The worst push: graph first, vocabulary last, straight into <base>/2 (no rename)."""
    base = tmp_path / "m"
    install_version(vocab_templates[1], str(base), 1)
    with _server(_config(m=base)) as server:
        channel, predict, models = _stubs(server)
        with channel, SteadyLoad(predict, lambda: vocab_request("m"), check=check_response) as load:
            statuses = []
            # Each pause spans two polls, so every partial state is seen by the server.
            files = slow_copy(vocab_templates[2], str(base / "2"), pause_s=2 * POLL_S,
                              on_file=lambda rel: statuses.append((rel, _status(models, "m"))))
            wait_for(lambda: load.last_version() == 2, what="traffic on version 2")
        assert files[0] == "saved_model.pb" and files[-1] == "assets/users.txt"
        # Until the last file landed, version 2 was not even tried (no LOADING, no failed END).
        assert all(2 not in status for _, status in statuses[:-1]), statuses
        assert server.metrics.model_loads.labels("m", "failure")._value.get() == 0
        assert load.failures == [] and load.wrong == []
        assert 1 in load.versions[0] and 2 in load.versions[0]


def test_atomic_push_and_version_switch_under_load(tmp_path, templates):
    base = make_base(tmp_path, templates, "m", [1])
    with _server(_config("latest1", m=base)) as server:
        channel, predict, models = _stubs(server)
        with channel, SteadyLoad(predict, lambda: recommend_request("m"), check=_template_answer_ok) as load:
            install_version(templates[2], base, 2)
            wait_for(lambda: _status(models, "m") == {2: State.AVAILABLE, 1: State.END}, what="switch to 2")
        assert load.failures == [] and load.wrong == []
        assert load.last_version() == 2


def test_loaded_version_changed_in_place_is_reloaded_without_a_gap(tmp_path, vocab_templates):
    base = tmp_path / "m"
    version_dir = install_version(vocab_templates[1], str(base), 1)
    events = []
    with _server(_config(m=base), events=events) as server:
        channel, predict, _ = _stubs(server)
        reversed_users = list(reversed(Path(version_dir, "assets/users.txt").read_text().split()))

        def pristine_or_new(response):
            ids = [b.decode() for b in response.outputs[names.OUT_ITEM_IDS].string_val]
            new = [str(reversed_users.index("u3")), str(reversed_users.index("u40")), "-1"]
            return None if check_response(response) is None or ids == new else f"unexpected ids {ids}"

        with channel:
            with SteadyLoad(predict, lambda: vocab_request("m"), check=pristine_or_new) as load:
                tmp = Path(version_dir, "assets", ".users.txt.tmp")
                tmp.write_text("\n".join(reversed_users) + "\n")
                os.replace(tmp, Path(version_dir, "assets/users.txt"))
                wait_for(lambda: sum(e[0] == "loaded" for e in events) == 2, what="the reload")
            answer = predict.Predict(vocab_request("m"), timeout=10)
        assert load.failures == [] and load.wrong == []
        assert answer.outputs[names.OUT_ITEM_IDS].string_val[0] == str(reversed_users.index("u3")).encode()


# -- Reloads -------------------------------------------------------------------------


def _reload(models_stub, config) -> None:
    response = models_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                                     timeout=60)
    assert response.status.error_code == 0, response.status.error_message


def test_reload_to_byte_copy_missing_path_or_incomplete_path_keeps_serving(tmp_path, templates, vocab_templates):
    first = make_base(tmp_path, templates, "first", [1])
    copy = shutil.copytree(first, tmp_path / "copy")  # byte copy, same version, another path
    incomplete = tmp_path / "incomplete"
    slow_copy(templates[2], str(incomplete / "2"), 0)
    os.remove(incomplete / "2" / "variables" / "variables.index")
    events = []
    with _server(_config(m=first), events=events) as server:
        channel, predict, models = _stubs(server)
        with channel, SteadyLoad(predict, lambda: recommend_request("m"), check=_template_answer_ok) as load:
            _reload(models, _config(m=copy))
            assert events[-1] == ("loaded", "m", 1, str(copy / "1"))  # the new copy loaded before the old left
            load.wait_answers(20)
            _reload(models, _config(m=tmp_path / "missing"))
            load.wait_answers(20)
            _reload(models, _config(m=incomplete))
            load.wait_answers(20)
            assert _status(models, "m") == {1: State.AVAILABLE}
            assert server.manager.health() == (True, "")
        assert load.failures == [] and load.wrong == []
        assert [e[0] for e in events] == ["loaded", "loaded"]  # nothing unloaded, nothing failed


def test_removed_model_reports_end_and_can_come_back(tmp_path, templates):
    bases = {"keep": make_base(tmp_path, templates, "keep", [1]), "gone": make_base(tmp_path, templates, "gone", [1, 2])}
    config = _config(**bases)
    with _server(config) as server:
        channel, predict, models = _stubs(server)
        with channel:
            assert list(_status(models, "gone")) == [2]
            _reload(models, _config(keep=bases["keep"]))
            assert _status(models, "gone") == {2: State.END}
            with pytest.raises(grpc.RpcError) as info:
                predict.Predict(recommend_request("gone"), timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            _reload(models, config)
            assert _status(models, "gone") == {2: State.AVAILABLE}


# -- Rollback ------------------------------------------------------------------------


def test_rollback_under_load_switches_to_the_previous_complete_version(tmp_path, templates):
    base = make_base(tmp_path, templates, "m", [1, 2])
    slow_copy(templates[3], os.path.join(base, "3"), 0)  # a killed push: no graph yet
    os.remove(os.path.join(base, "3", "saved_model.pb"))
    with _server(_config("latest1", m=base)) as server:
        channel, predict, models = _stubs(server)
        with channel, SteadyLoad(predict, lambda: recommend_request("m"), check=_template_answer_ok) as load:
            assert load.last_version() == 2
            message = rollback(Path(base))
            assert "now serving 1" in message and "3" in message  # the incomplete 3 is named, not counted
            wait_for(lambda: _status(models, "m") == {2: State.END, 1: State.AVAILABLE}, what="rollback to 1")
        assert load.failures == [] and load.wrong == []
        assert load.last_version() == 1


# -- Restarts ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_restart_never_answers_not_found_once_the_port_is_open(tmp_path, templates):
    base = make_base(tmp_path, templates, "m", [1])
    grpc_port, rest_port = _free_port(), _free_port()
    codes: dict[str, int] = {}
    http: dict[int, int] = {}
    stop = threading.Event()

    def grpc_client():
        # Fast reconnects, so the client hits the port the moment it opens.
        options = [("grpc.initial_reconnect_backoff_ms", 5), ("grpc.min_reconnect_backoff_ms", 5),
                   ("grpc.max_reconnect_backoff_ms", 20)]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=options) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.Predict(recommend_request("m"), timeout=5)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                codes[code] = codes.get(code, 0) + 1

    def rest_client():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/healthz", timeout=5) as r:
                    http[r.status] = http.get(r.status, 0) + 1
            except urllib.error.HTTPError as e:
                http[e.code] = http.get(e.code, 0) + 1
            except OSError:  # connection refused: the port is not open yet
                time.sleep(0.002)

    clients = [threading.Thread(target=grpc_client), threading.Thread(target=rest_client)]
    for t in clients:
        t.start()
    try:
        for _ in range(2):  # a start, then a restart on the same ports
            ok, healthy = codes.get("OK", 0), http.get(200, 0)
            with _server(_config(m=base), grpc_port=grpc_port, rest_port=rest_port):
                wait_for(lambda: codes.get("OK", 0) > ok + 20 and http.get(200, 0) > healthy + 5, what="answers")
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert codes.get("NOT_FOUND", 0) == 0, codes
    # Port closed: UNAVAILABLE; an RPC arriving while the first server shuts down: CANCELLED.
    assert set(codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, codes
    assert set(http) == {200}, http


def test_health_is_not_ready_before_the_initial_load(tmp_path, templates):
    base = make_base(tmp_path, templates, "m", [1])
    manager = VersionManager(_config(m=base), warmup=lambda version, request: None)
    try:
        assert manager.health() == (False, "initial model load in progress")
        manager.initial_load()
        assert manager.health() == (True, "")
    finally:
        manager.stop()


def test_infra_validation_refuses_an_incomplete_export_at_once(tmp_path, vocab_templates):
    from serving.model_server import infra_validate
    from serving.model_server.infra_validation import InfraValidationError

    broken = shutil.copytree(vocab_templates[1], tmp_path / "export")
    os.remove(broken / "variables" / "variables.data-00001-of-00004")
    started = time.monotonic()
    with pytest.raises(InfraValidationError, match=r"incomplete SavedModel \(variables/ lacks data shard\(s\) \[1\]"):
        infra_validate(str(broken), "m", timeout_s=60)
    assert time.monotonic() - started < 5  # not the timeout
