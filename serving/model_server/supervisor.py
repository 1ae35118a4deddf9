"""Multi-process mode of the command line (`--num_workers N`, N > 1): one supervisor, N workers.

Python's GIL holds one server process to about one core of request handling,
so with N > 1 `cli.main` runs this supervisor instead of a server. It

* resolves the ports first: the gRPC and REST ports (0 / auto: one concrete
  free port) are bound here with SO_REUSEPORT and held, not listened on, for the
  supervisor's lifetime (so no other program takes them between worker
  restarts; the kernel hands connections only to listening sockets, i.e. to the
  workers); a fixed --monitoring_port P is checked free for P .. P+N-1;
* starts N workers, each `python -m serving.model_server <the same flags>
  --port P --rest_api_port R --monitoring_port P+i --worker_index i`: a full
  server (its own models, its own version manager polling the same base paths,
  its own request log files `<prefix>-w<i>-...`) binding the shared ports with
  SO_REUSEPORT (Linux), so the kernel spreads connections over the workers;
* reports ready once every worker is (the usual "gRPC listening on ..." lines,
  then "all N workers ready"): each worker sends its ports over a socketpair
  after its initial load, when a single server would print those lines;
* restarts a worker that dies, with backoff (0.5 s doubling to 10 s), and gives
  up (exit 1; exit 2 at once when a worker refuses its flags or config, as a
  single server would) when one dies MAX_QUICK_DEATHS times in a row before
  being ready or within QUICK_DEATH_S of it, e.g. a model config that fails;
* forwards SIGTERM / SIGINT to the workers, waits SHUTDOWN_TIMEOUT_S, then
  SIGKILLs what is left; exits 0 when every worker shut down cleanly.

Workers run in their own session (a terminal's Ctrl-C reaches the supervisor
only, which forwards it), and stop themselves (SIGTERM) when the supervisor's
end of their socketpair closes, so a supervisor killed with SIGKILL leaves none.
The supervisor imports neither TensorFlow nor gRPC.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

log = logging.getLogger(__name__)

QUICK_DEATH_S = 10.0  # a worker dying before ready, or this soon after, counts as a failed start
MAX_QUICK_DEATHS = 5  # failed starts in a row (one worker) before the supervisor gives up
BACKOFF_S, MAX_BACKOFF_S = 0.5, 10.0
SHUTDOWN_TIMEOUT_S = 30.0  # after SIGTERM, then SIGKILL
TICK_S = 0.2
CONFIG_ERROR_EXIT = 2  # cli.main's exit code for bad flags / config: a restart cannot fix it

# The package root, put first on the workers' PYTHONPATH (the supervisor may run as `recsys serve`).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_num_workers(requested: int) -> int:
    """--num_workers: 0 = one per CPU core this process may run on."""
    if requested == 0:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    return requested


def _addrinfo(host: str, port: int):
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return family, kind, proto, address


def _probe(host: str, port: int) -> int:
    """Binds and closes a plain socket (SO_REUSEADDR, as the servers): fails when anything holds `port`."""
    family, kind, proto, address = _addrinfo(host, port)
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(address)
        return s.getsockname()[1]


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound (not listening) with SO_REUSEPORT to a free `port` (0: any), and the port.

    Held while the workers listen on the same port with SO_REUSEPORT: it keeps
    other programs off the port, and gets no connections itself.

    Raises:
        OSError: the port is in use (by anything, another multi-process server included).
    """
    port = _probe(host, port)  # a concrete, currently free port
    family, kind, proto, address = _addrinfo(host, port)
    s = socket.socket(family, kind, proto)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(address)
    except BaseException:
        s.close()
        raise
    return s, port


class _Worker:
    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.control: socket.socket | None = None  # the supervisor's end of the socketpair
        self.buffer = b""
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.ever_ready = False
        self.info: dict = {}
        self.quick_deaths = 0
        self.next_start = 0.0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts, watches, restarts and stops the workers (see the module docstring).

    Args:
        args: the parsed flags (cli.build_parser()).
        argv: the command line's flags, passed on to each worker.
        num_workers: N > 1.
        out: where the status lines go (stdout).
    """

    def __init__(self, args, argv: list[str], num_workers: int, out=None):
        self.args = args
        self.argv = list(argv)
        self.workers = [_Worker(i) for i in range(num_workers)]
        self.out = out or sys.stdout
        self._reserved: list[socket.socket] = []
        self._stop_signal: int | None = None
        self.grpc_port = self.rest_port = None

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    # -- ports ------------------------------------------------------------------------

    def _resolve_ports(self) -> None:
        host, n = self.args.host, len(self.workers)
        if self.args.port is not None:
            try:
                sock, self.grpc_port = reserve_port(host, self.args.port)
            except OSError as e:
                raise OSError(f"cannot bind gRPC on {host}:{self.args.port}: {e}; choose another --port") from e
            self._reserved.append(sock)
        if self.args.rest_api_port is not None:
            try:
                sock, self.rest_port = reserve_port(host, self.args.rest_api_port)
            except OSError as e:
                raise OSError(f"cannot bind REST on {host}:{self.args.rest_api_port}: {e}; "
                              "choose another --rest_api_port") from e
            self._reserved.append(sock)
        port = self.args.monitoring_port
        if port:  # worker i serves its own metrics on port + i
            if port + n - 1 > 65535:
                raise OSError(f"--monitoring_port {port} + {n} workers passes 65535")
            for p in range(port, port + n):
                try:
                    _probe(host, p)
                except OSError as e:
                    raise OSError(f"cannot bind metrics on {host}:{p} (worker {p - port} of --monitoring_port "
                                  f"{port} + i): {e}; choose another --monitoring_port") from e

    def _worker_command(self, index: int, control_fd: int) -> list[str]:
        extra = []
        if self.grpc_port is not None:
            extra += ["--port", str(self.grpc_port)]
        if self.rest_port is not None:
            extra += ["--rest_api_port", str(self.rest_port)]
        if self.args.monitoring_port is not None:
            extra += ["--monitoring_port", str(self.args.monitoring_port + index if self.args.monitoring_port else 0)]
        extra += ["--worker_index", str(index), "--worker_control_fd", str(control_fd)]
        return [sys.executable, "-m", "serving.model_server", *self.argv, *extra]

    # -- workers ----------------------------------------------------------------------

    def _start(self, w: _Worker) -> None:
        mine, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            w.proc = subprocess.Popen(self._worker_command(w.index, theirs.fileno()), env=env,
                                      pass_fds=(theirs.fileno(),), start_new_session=True)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        w.control, w.buffer, w.info = mine, b"", {}
        w.started_at, w.ready_at = time.monotonic(), None
        log.info("started worker %d (pid %d)", w.index, w.proc.pid)

    def _close_control(self, w: _Worker) -> None:
        if w.control is not None:
            w.control.close()
            w.control = None

    def _read(self, w: _Worker) -> None:
        try:
            data = w.control.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker exited (poll() reports it)
            self._close_control(w)
            return
        w.buffer += data
        while b"\n" in w.buffer:
            line, w.buffer = w.buffer.split(b"\n", 1)
            message = json.loads(line)
            if message.get("event") == "ready":
                w.info, w.ready_at = message, time.monotonic()
                if w.ever_ready:
                    self._say(f"worker {w.index} (pid {w.proc.pid}) ready again")
                w.ever_ready = True

    def _reap(self, w: _Worker) -> int | None:
        """Handles a worker that exited; returns an exit code to give up with, else None."""
        rc = w.proc.returncode
        now = time.monotonic()
        self._close_control(w)
        how = f"exit code {rc}" if rc >= 0 else f"signal {_signal_name(-rc)}"
        quick = w.ready_at is None or now - w.ready_at < QUICK_DEATH_S
        pid = w.proc.pid
        w.proc = None
        if rc == CONFIG_ERROR_EXIT and not w.ever_ready:
            log.error("worker %d (pid %d) refused its flags or config (%s); see its error above", w.index, pid, how)
            return CONFIG_ERROR_EXIT
        w.quick_deaths = w.quick_deaths + 1 if quick else 0
        if w.quick_deaths >= MAX_QUICK_DEATHS:
            log.error("worker %d died %d times in a row before it was ready or within %.0fs of it (last: pid %d, "
                      "%s); giving up; see its errors above", w.index, w.quick_deaths, QUICK_DEATH_S, pid, how)
            return 1
        delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** max(0, w.quick_deaths - 1))
        log.warning("worker %d (pid %d) died (%s) after %.1fs%s; restarting it in %.1fs", w.index, pid, how,
                    now - w.started_at, "" if w.ready_at is not None else ", before it was ready", delay)
        w.next_start = now + delay
        return None

    def _announce(self) -> None:
        first = self.workers[0].info
        for line in first.get("lines", []):
            if line.startswith("metrics listening on "):
                for w in self.workers:
                    self._say(f"metrics listening on http://{self.args.host}:{w.info.get('metrics_port')}/metrics "
                              f"(worker {w.index})")
            else:
                self._say(line)
        pids = ", ".join(str(w.proc.pid) for w in self.workers)
        self._say(f"all {len(self.workers)} workers ready (pids {pids}); supervisor pid {os.getpid()}")

    def _on_signal(self, signum, _frame) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Runs until SIGTERM/SIGINT (then 0 after a clean shutdown) or until it gives up; the exit code."""
        try:
            self._resolve_ports()
        except OSError as e:
            for sock in self._reserved:
                sock.close()
            print(f"error: {e}", file=sys.stderr)
            return 1
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        give_up, clean = None, False
        try:
            self._say(f"starting {len(self.workers)} workers (--num_workers); "
                      f"gRPC port {self.grpc_port}, REST port {self.rest_port}")
            give_up = self._loop()
        finally:  # also on an unexpected error here: no worker is left behind
            if self._stop_signal is not None:
                self._say(f"shutting down {len(self.workers)} workers ({signal.Signals(self._stop_signal).name})")
            try:
                clean = self._shutdown()
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
                for sock in self._reserved:
                    sock.close()
        if give_up is not None:
            return give_up
        if clean:
            self._say("all workers stopped")
        return 0 if clean else 1

    def _loop(self) -> int | None:
        """Until a stop signal (None) or giving up (the exit code)."""
        announced = False
        while self._stop_signal is None:
            now = time.monotonic()
            for w in self.workers:
                if w.proc is None:
                    if now >= w.next_start:
                        self._start(w)
                elif w.proc.poll() is not None:
                    give_up = self._reap(w)
                    if give_up is not None:
                        return give_up
            if not announced and all(w.alive and w.ready_at is not None for w in self.workers):
                self._announce()
                announced = True
            readable = [w.control for w in self.workers if w.control is not None]
            ready, _, _ = select.select(readable, [], [], TICK_S)
            for w in self.workers:
                if w.control is not None and w.control in ready:
                    self._read(w)
        return None

    def _shutdown(self) -> bool:
        """SIGTERM to every worker, wait, SIGKILL the rest; True when all exited cleanly."""
        live = [w for w in self.workers if w.proc is not None]
        for w in live:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        clean = True
        for w in live:
            try:
                rc = w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop within %.0fs of SIGTERM; killing it",
                          w.index, w.proc.pid, SHUTDOWN_TIMEOUT_S)
                w.proc.kill()
                rc = w.proc.wait()
            if rc not in (0, -signal.SIGTERM):  # -SIGTERM: stopped before its handler was installed
                clean = False
                log.error("worker %d (pid %d) exited with %s while shutting down", w.index, w.proc.pid, rc)
            self._close_control(w)
        return clean


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def supervise(args, argv: list[str], num_workers: int) -> int:
    """Runs the multi-process server; returns the exit code (cli.main's)."""
    return Supervisor(args, argv, num_workers).run()
