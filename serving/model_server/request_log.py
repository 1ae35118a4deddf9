"""Request log files: their names, and reading them back.

The model server writes each sampled Predict call as a
`tensorflow_serving.apis.prediction_log_pb2.PredictionLog` (log_metadata +
predict_log {request, response}) into uncompressed TFRecord files named

    <filename_prefix>-<UTC timestamp>-<seq>.tfrecord    e.g. /logs/rec-20260101T120000Z-00000.tfrecord

or, from worker i of a multi-process server (`--num_workers N`, N > 1),

    <filename_prefix>-w<i>-<UTC timestamp>-<seq>.tfrecord    e.g. /logs/rec-w1-20260101T120000Z-00000.tfrecord

so `<filename_prefix>-*.tfrecord` and the directory match every worker's files.

A file is written as `<name>.tfrecord.partial` and renamed to `<name>.tfrecord`
once closed (rotation or shutdown), so `*.tfrecord` only ever matches complete
files. The same format as TF Serving warmup files, so a log file can also be
replayed as warmup requests.

Example (turning logs into training data):
    from serving.model_server.request_log import read_prediction_logs
    for log in read_prediction_logs("/var/log/recsys/ranking"):
        spec = log.log_metadata.model_spec          # name, version served, signature
        request, response = log.predict_log.request, log.predict_log.response
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterable, Iterator

from google.protobuf.message import DecodeError
from tensorflow_serving.apis import prediction_log_pb2

SUFFIX = ".tfrecord"
PARTIAL_SUFFIX = ".partial"  # appended while a file is being written

PathsOrGlob = str | os.PathLike | Iterable[str | os.PathLike]


def log_file_name(prefix: str, opened_at: float, seq: int, worker: int | None = None) -> str:
    """`<prefix>-<UTC timestamp>-<seq>.tfrecord` for a file opened at `opened_at` (unix seconds);
    `<prefix>-w<worker>-<UTC timestamp>-<seq>.tfrecord` from a worker of a multi-process server."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(opened_at))
    tag = "" if worker is None else f"-w{worker}"
    return f"{prefix}{tag}-{stamp}-{seq:05d}{SUFFIX}"


def log_files(paths_or_glob: PathsOrGlob) -> list[str]:
    """Expands files, directories and glob patterns into request log files.

    Each entry may be a file (read as given, `.partial` included), a directory
    (every `*.tfrecord` below it, recursively) or a glob pattern (files still
    being written, `*.partial`, only when the pattern ends in `.partial`). Files
    come sorted per entry, which is chronological per filename prefix (and
    per worker of a multi-process server); duplicates are dropped.

    Raises:
        FileNotFoundError: a plain path does not exist, or nothing matched at all.
    """
    entries = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    found: list[str] = []
    for entry in map(os.fspath, entries):
        if os.path.isdir(entry):
            found += sorted(glob.glob(os.path.join(glob.escape(entry), "**", "*" + SUFFIX), recursive=True))
        elif glob.has_magic(entry):
            found += sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p)
                            and (not p.endswith(PARTIAL_SUFFIX) or entry.endswith(PARTIAL_SUFFIX)))
        elif os.path.isfile(entry):
            found.append(entry)
        else:
            raise FileNotFoundError(f"request log {entry!r} does not exist")
    if not found:
        raise FileNotFoundError(f"no request log files (*{SUFFIX}) match {[os.fspath(e) for e in entries]}")
    return list(dict.fromkeys(found))


def read_prediction_logs(paths_or_glob: PathsOrGlob) -> Iterator[prediction_log_pb2.PredictionLog]:
    """Yields every PredictionLog in the given request log files, file by file.

    Args:
        paths_or_glob: a file, directory or glob pattern, or a list of them
            (see `log_files`), e.g. "/var/log/recsys/rec-*.tfrecord".

    Raises:
        FileNotFoundError: at once, when there is nothing to read (see `log_files`).
        ValueError: while iterating, at a corrupt or truncated record (names the file).
    """
    return _read(log_files(paths_or_glob))


def _read(paths: list[str]) -> Iterator[prediction_log_pb2.PredictionLog]:
    import tensorflow as tf  # only when reading: the names above stay cheap to import

    for path in paths:
        records = tf.data.TFRecordDataset(path).as_numpy_iterator()
        index = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
                raise ValueError(f"{path}: request log record {index} is corrupt or truncated: {e.message}") from e
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record)
            except DecodeError as e:
                raise ValueError(f"{path}: request log record {index} is not a PredictionLog: {e}") from e
            yield log
            index += 1
