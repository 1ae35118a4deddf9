"""Server-side batching of concurrent Predict calls (TF Serving's --enable_batching).

Requests to the same loaded version and signature whose inputs are all
batch-major with identical trailing shapes and dtypes share a queue. A batch
runs when it reaches `max_batch_size` rows or its oldest request has waited
`batch_timeout_micros`; its inputs are concatenated along dim 0, the signature
runs once, and each output is split back by row counts.

As in TF Serving, a model whose outputs depend on the whole batch (for example
`recommend`, whose outputs have max(k) columns) returns outputs shaped by the
batch, not by the single request.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import grpc
import numpy as np

from serving.model_server.config import BatchingOptions
from serving.model_server.errors import ServingError
from serving.model_server.signatures import Signature, run_signature

log = logging.getLogger(__name__)


class _Task:
    __slots__ = ("arrays", "rows", "done", "result", "error", "abandoned")

    def __init__(self, arrays: dict[str, np.ndarray], rows: int):
        self.arrays = arrays
        self.rows = rows
        self.done = threading.Event()
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.abandoned = False  # the caller gave up (deadline); skip it


class _Batch:
    __slots__ = ("version", "signature", "tasks", "rows", "created", "closed")

    def __init__(self, version, signature: Signature):
        self.version = version
        self.signature = signature
        self.tasks: list[_Task] = []
        self.rows = 0
        self.created = time.monotonic()
        self.closed = False


class Batcher:
    """Groups concurrent requests into batches and runs them on worker threads.

    Args:
        options: batch size, timeout, thread and queue limits.
        metrics: optional ServerMetrics (batch size histogram).
    """

    def __init__(self, options: BatchingOptions, metrics=None):
        self.options = options
        self._metrics = metrics
        self._cv = threading.Condition()
        self._queues: dict[tuple, collections.deque[_Batch]] = {}
        self._stopping = False
        self.batches_run = 0  # for tests and logs: batches executed
        self.max_rows_seen = 0
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def can_batch(signature: Signature, arrays: dict[str, np.ndarray]) -> bool:
        """True when every input has a dim 0 and they all agree on it."""
        if not signature.has_batch_dimension():
            return False
        sizes = {a.shape[0] if a.ndim else None for a in arrays.values()}
        return len(sizes) == 1 and None not in sizes

    def submit(self, version, signature: Signature, arrays: dict[str, np.ndarray],
               deadline: float | None) -> dict[str, np.ndarray]:
        """Queues one request and blocks until its rows of every output are ready.

        Args:
            version: the LoadedVersion (the caller holds its lease).
            signature: the signature to run.
            arrays: validated inputs sharing dim 0.
            deadline: time.monotonic() deadline, or None.

        Raises:
            ServingError: UNAVAILABLE when the queue is full, DEADLINE_EXCEEDED when
                the deadline passes while queued, or the model's own error.
        """
        rows = next(iter(arrays.values())).shape[0]
        key = (id(version), signature.name) + tuple(
            (name, a.dtype.str, a.shape[1:]) for name, a in sorted(arrays.items())
        )
        task = _Task(arrays, rows)
        with self._cv:
            if self._stopping:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another replica")
            queue = self._queues.setdefault(key, collections.deque())
            batch = queue[-1] if queue else None
            if batch is None or batch.closed or batch.rows + rows > self.options.max_batch_size:
                if len(queue) >= self.options.max_enqueued_batches:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full; retry with backoff",
                    )
                batch = _Batch(version, signature)
                queue.append(batch)
            batch.tasks.append(task)
            batch.rows += rows
            if batch.rows >= self.options.max_batch_size:
                batch.closed = True
            self._cv.notify_all()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not task.done.wait(timeout):
            task.abandoned = True
            if not task.done.is_set():
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while waiting in the batch queue")
        if task.error is not None:
            raise task.error
        return task.result

    def stop(self) -> None:
        """Runs what is queued, then stops the worker threads."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def _next_batch(self) -> _Batch | None:
        """Pops the batch to run next, waiting as needed; None when stopping and drained."""
        timeout_s = self.options.batch_timeout_micros / 1e6
        with self._cv:
            while True:
                now = time.monotonic()
                ready_key, wake_at = None, None
                for key, queue in self._queues.items():
                    head = queue[0]
                    due = head.created + timeout_s
                    if head.closed or due <= now or self._stopping:
                        if ready_key is None or head.created < self._queues[ready_key][0].created:
                            ready_key = key
                    elif wake_at is None or due < wake_at:
                        wake_at = due
                if ready_key is not None:
                    queue = self._queues[ready_key]
                    batch = queue.popleft()
                    batch.closed = True
                    if not queue:
                        del self._queues[ready_key]
                    return batch
                if self._stopping:
                    return None
                self._cv.wait(None if wake_at is None else wake_at - now)

    def _worker(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as e:  # never leave a caller waiting forever
                log.exception("batch execution failed")
                for task in batch.tasks:
                    if not task.done.is_set():
                        task.error = e if isinstance(e, ServingError) else ServingError(
                            grpc.StatusCode.INTERNAL, f"batch execution failed: {e}")
                        task.done.set()

    def _run(self, batch: _Batch) -> None:
        tasks = [t for t in batch.tasks if not t.abandoned]
        if not tasks:
            return
        rows = sum(t.rows for t in tasks)
        self.batches_run += 1
        self.max_rows_seen = max(self.max_rows_seen, rows)
        if self._metrics:
            self._metrics.batch_size.labels(batch.version.model_name).observe(rows)
        if len(tasks) == 1:
            self._run_single(batch.signature, tasks[0])
            return
        merged = {name: np.concatenate([t.arrays[name] for t in tasks]) for name in tasks[0].arrays}
        try:
            outputs = run_signature(batch.signature, merged)
        except ServingError:
            # One request's values can make the whole batch fail; run them one by
            # one so only that request sees the error.
            for task in tasks:
                self._run_single(batch.signature, task)
            return
        if any(o.ndim == 0 or o.shape[0] != rows for o in outputs.values()):
            # Outputs not batch-major: they cannot be split, so run unbatched.
            for task in tasks:
                self._run_single(batch.signature, task)
            return
        offset = 0
        for task in tasks:
            task.result = {k: v[offset:offset + task.rows] for k, v in outputs.items()}
            offset += task.rows
            task.done.set()

    @staticmethod
    def _run_single(signature: Signature, task: _Task) -> None:
        try:
            task.result = run_signature(signature, task.arrays)
        except ServingError as e:
            task.error = e
        task.done.set()
