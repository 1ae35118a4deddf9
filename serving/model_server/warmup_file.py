"""Reading TF Serving warmup files (assets.extra/tf_serving_warmup_requests).

The file is a TFRecord of `PredictionLog` protos. Only `predict_log` records are
supported because this server implements Predict only; any other kind makes the
warmup (and so the load) fail with a message saying so, rather than being
silently skipped.
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving import names

# TF Serving replays at most this many records (saved_model_warmup_util.cc).
MAX_WARMUP_RECORDS = 1000


class WarmupError(RuntimeError):
    """The warmup file is unreadable or holds requests this server cannot replay."""


def warmup_file(version_dir: str) -> str:
    """Path of the warmup file inside a SavedModel version directory."""
    return os.path.join(version_dir, names.WARMUP_DIR, names.WARMUP_FILE)


def read_warmup_requests(version_dir: str) -> list[predict_pb2.PredictRequest]:
    """Returns the PredictRequests recorded for a version ([] when there is no file).

    Raises:
        WarmupError: when the file is corrupt, holds a non-predict log, or has more
            than MAX_WARMUP_RECORDS records.
    """
    path = warmup_file(version_dir)
    if not tf.io.gfile.exists(path):  # a local path or a URI (gs:// ...)
        return []
    requests = []
    try:
        for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if i >= MAX_WARMUP_RECORDS:
                raise WarmupError(
                    f"{path}: more than {MAX_WARMUP_RECORDS} warmup records; TF Serving caps warmup at that, write fewer"
                )
            log = prediction_log_pb2.PredictionLog.FromString(record)
            kind = log.WhichOneof("log_type")
            if kind != "predict_log":
                raise WarmupError(
                    f"{path}: record {i} is a {kind or 'empty'} log; this server replays only predict_log records"
                )
            requests.append(log.predict_log.request)
    except WarmupError:
        raise
    except Exception as e:  # corrupt TFRecord or proto
        raise WarmupError(f"{path}: cannot read warmup records ({type(e).__name__}: {e})") from e
    return requests


def write_warmup_requests(version_dir: str, requests) -> str:
    """Writes PredictRequests as a warmup file (used by exporters and tests).

    Returns:
        The path written.
    """
    path = warmup_file(version_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
