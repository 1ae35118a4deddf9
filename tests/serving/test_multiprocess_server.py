"""The multi-process model server (`--num_workers N`): real processes on real ports.

One supervisor with two workers is shared by the tests on `mp_server` (a worker
start imports TensorFlow, ~15-30 s on a busy machine); they run in file order,
and the SIGTERM test, last, stops it. The cheap tests at the end drive the
supervisor with stand-in worker commands, and check the request log names.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import serving  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from serving import names
from serving.model_server import request_log, supervisor
from serving.model_server.cli import build_parser
from tests.support.client_models import save_models

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER_KEY = "x-model-server-worker"
POPULAR_TOP3 = [b"i10", b"i11", b"i12"]  # tests/support/client_models.py: POPULARITY


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def popular_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = names.RETRIEVAL_MODEL
    request.model_spec.signature_name = names.POPULAR_SIGNATURE
    request.inputs[names.K].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT32, int_val=[3],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    return request


def predict(port: int) -> tuple[int, predict_pb2.PredictResponse]:
    """One Predict over a fresh channel (one HTTP/2 connection sticks to one worker): (worker, response)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response, call = stub.Predict.with_call(popular_request(), timeout=10)
    worker = dict(call.trailing_metadata())[WORKER_KEY]
    assert list(response.outputs[names.OUT_ITEM_IDS].string_val) == POPULAR_TOP3
    return int(worker), response


class Running:
    """The supervisor process and what it printed (its workers print to the same pipe)."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        """The first line from index `after` matching `pattern`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if m := re.search(pattern, line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f}s:\n{self.output}")
                self._changed.wait(min(left, 0.5))

    def worker_pids(self) -> dict[int, int]:
        """{worker index: pid} of each worker's latest start."""
        return {int(m[1]): int(m[2]) for m in re.finditer(r"worker (\d+): ready \(pid (\d+)\)", self.output)}


@pytest.fixture(scope="module")
def mp_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    config = save_models(str(root / "models"))
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.model_server", "--model_config_file", config, "--num_workers", "2",
         "--port", "0", "--rest_api_port", "auto", "--monitoring_port", "0",
         "--file_system_poll_wait_seconds", "0.5", "--request_log_dir", str(root / "logs"),
         "--tensorflow_intra_op_parallelism", "1", "--tensorflow_inter_op_parallelism", "1",
         "--log_level", "WARNING"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    running = Running(process)
    try:
        running.wait_for(r"all 2 workers ready", 150)
        running.port = int(running.wait_for(r"^gRPC listening on 127\.0\.0\.1:(\d+)", 1)[1])
        running.rest_url = running.wait_for(r"^REST listening on (http://\S+)", 1)[1]
        running.root = root
        yield running
    finally:
        if process.poll() is None:
            pids = running.worker_pids().values()
            process.kill()
            process.wait()
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_both_workers_answer_on_one_port(mp_server):
    seen = set()
    for _ in range(200):
        worker, _ = predict(mp_server.port)
        seen.add(worker)
        if seen == {0, 1}:
            break
    assert seen == {0, 1}
    # REST shares its port the same way (urllib opens a connection per request).
    seen = set()
    for _ in range(200):
        with urllib.request.urlopen(f"{mp_server.rest_url}/v1/models/{names.RETRIEVAL_MODEL}", timeout=10) as r:
            assert r.status == 200
            seen.add(r.headers[WORKER_KEY])
        if seen == {"0", "1"}:
            break
    assert seen == {"0", "1"}
    # Each worker serves its own metrics on its own port.
    metrics = dict((int(w), int(p)) for p, w in re.findall(
        r"metrics listening on http://127\.0\.0\.1:(\d+)/metrics \(worker (\d+)\)", mp_server.output))
    assert sorted(metrics) == [0, 1] and len(set(metrics.values())) == 2
    for port in metrics.values():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert 'recsys_model_server_requests_total{api="Predict"' in r.read().decode()


def test_version_switch_reaches_every_worker_without_failures(mp_server):
    base = mp_server.root / "models" / names.RETRIEVAL_MODEL
    answers: list[tuple[int, int]] = []  # (worker, version)
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                worker, response = predict(mp_server.port)
                answers.append((worker, response.model_spec.version.value))
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                failures.append(e)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.5)
        shutil.copytree(base / "1", base / ".tmp-2")  # pushed as the pipeline does: complete, then renamed
        os.rename(base / ".tmp-2", base / "2")
        deadline = time.monotonic() + 60
        while {w for w, v in answers if v == 2} != {0, 1} and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures[:3]
    assert {w for w, v in answers if v == 2} == {0, 1}, answers[-20:]
    assert {w for w, v in answers if v == 1}, "no answer before the switch"


def test_killed_worker_is_restarted_and_requests_keep_being_answered(mp_server):
    victim = mp_server.worker_pids()[1]
    mark = len(mp_server.lines)
    os.kill(victim, signal.SIGKILL)
    # Connections the kernel had queued on the dying worker's sockets are reset (SO_REUSEPORT), so
    # wait until the supervisor reaped it: every thread gone, its sockets closed (a zombie leader is not enough).
    mp_server.wait_for(rf"worker 1 \(pid {victim}\) died \(signal SIGKILL\)", 10, after=mark)
    assert not alive(victim)
    answered, seen = 0, set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        worker, _ = predict(mp_server.port)  # raises on a failed request
        answered += 1
        time.sleep(0.05)  # leave the cores to the restarting worker
        if worker == 1:
            seen.add(1)
            break
    assert seen == {1}, mp_server.output
    new_pid = int(mp_server.wait_for(r"worker 1 \(pid (\d+)\) ready again", 1, after=mark)[1])
    assert new_pid != victim and mp_server.worker_pids()[1] == new_pid
    assert answered > 1  # worker 0 answered while worker 1 restarted


def test_sigterm_stops_every_worker_and_exits_0(mp_server):
    pids = set(int(p) for p in re.findall(r"worker \d+: ready \(pid (\d+)\)", mp_server.output))
    assert len(pids) >= 2
    mp_server.process.send_signal(signal.SIGTERM)
    assert mp_server.process.wait(60) == 0, mp_server.output
    time.sleep(0.2)  # the reader thread takes the last lines
    assert "all workers stopped" in mp_server.output
    assert not [pid for pid in pids if alive(pid)]
    # Each worker closed its request log; the readers (request_log.log_files, which
    # tfx_pipeline/data/feedback.py uses) find every worker's files by the usual glob.
    logs = mp_server.root / "logs"
    files = request_log.log_files(str(logs / f"{names.RETRIEVAL_MODEL}-*.tfrecord"))
    workers = {re.match(rf"{names.RETRIEVAL_MODEL}-w(\d)-", os.path.basename(f))[1] for f in files}
    assert workers == {"0", "1"}, files
    assert request_log.log_files(str(logs)) == sorted(request_log.log_files(str(logs)))
    assert sum(1 for _ in request_log.read_prediction_logs(files)) > 0


# -- cheap: names, ports, the supervisor with stand-in workers ---------------------------------


def test_worker_log_file_names_match_the_readers(tmp_path):
    from tfx_pipeline.data.feedback import _log_files

    t = 1767268800.0  # 2026-01-01T12:00:00Z
    assert request_log.log_file_name(str(tmp_path / "rec"), t, 3) == str(
        tmp_path / "rec-20260101T120000Z-00003.tfrecord")
    assert request_log.log_file_name(str(tmp_path / "rec"), t, 3, worker=1) == str(
        tmp_path / "rec-w1-20260101T120000Z-00003.tfrecord")
    written = [request_log.log_file_name(str(tmp_path / "rec"), t, 0, worker=w) for w in (0, 1, 2)]
    written.append(request_log.log_file_name(str(tmp_path / "rec"), t, 0))  # a single-process server's
    for path in written:
        open(path, "wb").close()
    open(written[0] + request_log.PARTIAL_SUFFIX, "wb").close()  # still being written: not read
    expected = sorted(written)
    assert request_log.log_files(str(tmp_path / "rec-*.tfrecord")) == expected
    assert request_log.log_files(str(tmp_path)) == expected
    assert _log_files([str(tmp_path / "*.tfrecord")]) == expected


def parse(*flags: str):
    return build_parser().parse_args(["--model_config_file", "unused.config", *flags])


def test_num_workers_flag():
    assert parse().num_workers == 1
    assert supervisor.resolve_num_workers(0) == len(os.sched_getaffinity(0))
    assert supervisor.resolve_num_workers(3) == 3
    with pytest.raises(SystemExit):
        parse("--num_workers", "-1")


def test_worker_command_overrides_the_ports():
    args = parse("--port", "0", "--rest_api_port", "auto", "--monitoring_port", "9000", "--num_workers", "2")
    s = supervisor.Supervisor(args, ["--port", "0", "--rest_api_port", "auto", "--num_workers", "2"], 2)
    s.grpc_port, s.rest_port = 1234, 1235  # what _resolve_ports found
    command = s._worker_command(1, 7)
    assert command[:3] == [sys.executable, "-m", "serving.model_server"]
    worker = build_parser().parse_args(command[3:])
    assert (worker.port, worker.rest_api_port, worker.monitoring_port) == (1234, 1235, 9001)
    assert (worker.worker_index, worker.worker_control_fd) == (1, 7)
    args = parse("--port", "0", "--monitoring_port", "0")
    s = supervisor.Supervisor(args, [], 2)
    s.grpc_port = 1234
    worker = build_parser().parse_args(s._worker_command(0, 7)[3:])
    assert (worker.port, worker.rest_api_port, worker.monitoring_port) == (1234, None, 0)


def test_reserved_port_is_shared_only_by_reuseport_listeners():
    reserved, port = supervisor.reserve_port("127.0.0.1", 0)
    try:
        assert port > 0
        plain = socket.socket()
        with pytest.raises(OSError):  # anything else is kept off the port
            plain.bind(("127.0.0.1", port))
        plain.close()
        listeners = []
        for _ in range(2):  # what the workers do
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            s.listen(16)
            listeners.append(s)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # accepted by a listener, never by the reservation
        with pytest.raises(OSError, match="in use"):
            supervisor.reserve_port("127.0.0.1", port)
        for s in listeners:
            s.close()
    finally:
        reserved.close()


class StandIn(supervisor.Supervisor):
    """Runs `code` (python -c) as each worker."""

    code = "import sys; sys.exit(1)"

    def _worker_command(self, index, control_fd):
        return [sys.executable, "-c", self.code]


def test_gives_up_on_workers_dying_at_start(monkeypatch, capsys, caplog):
    monkeypatch.setattr(supervisor, "BACKOFF_S", 0.01)
    started = time.monotonic()
    assert StandIn(parse("--port", "0", "--monitoring_port", "none"), [], 2).run() == 1
    assert time.monotonic() - started < 30
    assert f"died {supervisor.MAX_QUICK_DEATHS} times in a row" in caplog.text and "giving up" in caplog.text


def test_config_error_of_a_worker_gives_up_at_once(monkeypatch, caplog):
    monkeypatch.setattr(StandIn, "code", "import sys; sys.exit(2)")
    assert StandIn(parse("--port", "0", "--monitoring_port", "none"), [], 2).run() == 2
    assert "refused its flags or config" in caplog.text


def test_busy_port_is_an_error_before_any_worker_starts(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert StandIn(parse("--port", str(port), "--monitoring_port", "none"), [], 2).run() == 1
    assert f"cannot bind gRPC on 127.0.0.1:{port}" in capsys.readouterr().err
