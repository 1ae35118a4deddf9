"""A bounded background load for fault tests: Predict in a loop, every outcome counted.

    with SteadyLoad(stub, lambda: request("m"), check=check_response) as load:
        ...  # the fault: a push, a reload, a rollback
    assert load.failures == [] and load.wrong == []

One or two threads send the same request back to back (a deadline on every call)
for as long as the block runs; `versions` holds the version each answer named,
in order per thread; `failures` every RPC error (code: details); `wrong` every
answer `check` rejected.
"""

from __future__ import annotations

import threading
import time

import grpc


class SteadyLoad:
    def __init__(self, stub, make_request, check=None, threads: int = 2, min_requests: int = 10,
                 timeout_s: float = 10.0):
        self._stub, self._make_request, self._check = stub, make_request, check
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]
        self._min_requests, self._timeout_s = min_requests, timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.versions: dict[int, list[int]] = {i: [] for i in range(threads)}
        self.failures: list[str] = []
        self.wrong: list[str] = []

    @property
    def answered(self) -> int:
        with self._lock:
            return sum(len(v) for v in self.versions.values())

    def last_version(self) -> int | None:
        with self._lock:
            latest = [v[-1] for v in self.versions.values() if v]
        return max(latest) if latest else None

    def wait_answers(self, n: int, timeout_s: float = 30.0) -> None:
        """Blocks until n more answers arrived (proves the load runs across the fault)."""
        target, deadline = self.answered + n, time.monotonic() + timeout_s
        while self.answered < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled: {self.answered} answers, failures {self.failures[:3]}")
            time.sleep(0.01)

    def _loop(self, i: int) -> None:
        request = self._make_request()
        while not self._stop.is_set():
            try:
                response = self._stub.Predict(request, timeout=self._timeout_s)
            except grpc.RpcError as e:
                with self._lock:
                    self.failures.append(f"{e.code().name}: {e.details()}")
                continue
            problem = self._check(response) if self._check else None
            with self._lock:
                self.versions[i].append(response.model_spec.version.value)
                if problem:
                    self.wrong.append(problem)

    def __enter__(self) -> "SteadyLoad":
        for t in self._threads:
            t.start()
        self.wait_answers(self._min_requests)
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.wait_answers(self._min_requests)  # still answering after the fault
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self._timeout_s + 5)
