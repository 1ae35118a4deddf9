"""Sees which Beam SDK worker processes this process starts, and when.

``--direct_running_mode=multi_processing`` makes the DirectRunner's FnApiRunner run each
Beam job's work in ``python -m apache_beam.runners.worker.sdk_worker_main`` subprocesses.
``WorkerWatch`` polls this process's children while a block runs and records each such
worker's pid and the time it was first seen, so a test can tell that the work really ran
outside the launching process (and which pipeline step started the workers).
"""

from __future__ import annotations

import threading
import time

import psutil

WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"


class WorkerWatch:
    """``with WorkerWatch() as watch: ...``; then ``watch.first_seen``: {pid: epoch seconds}."""

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.first_seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for child in me.children(recursive=True):
                try:
                    # argv [python, -m, WORKER_MODULE], not the `sh -c "..."` Beam starts it through
                    if child.pid not in self.first_seen and WORKER_MODULE in child.cmdline():
                        self.first_seen[child.pid] = time.time()
                except psutil.Error:  # exited between listing and reading
                    pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "WorkerWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> list[int]:
        """Pids of the workers first seen in [start, end] (epoch seconds)."""
        return sorted(pid for pid, t in self.first_seen.items() if start <= t <= end)
