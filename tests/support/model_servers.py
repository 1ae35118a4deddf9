"""Tiny SavedModels with the shape of the real signatures, for the server tests.

`recommend` mirrors serving/names.py's recommend signature (user_id string [B],
k int32 [B] -> item_ids string [B, max(k)], scores float32 [B, max(k)], padded
with "" / -inf past a row's k); scores are offset by 100 * version so tests
can tell which version answered. `score` is strictly per-row (for batching
checks) and counts its calls in a variable (for warmup checks).
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving import names
from serving.model_server.warmup_file import write_warmup_requests

SCORE_SIGNATURE = "score"


def _make_module(version: int) -> tf.Module:
    offset = float(100 * version)

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.calls = tf.Variable(0, dtype=tf.int64)

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name=names.USER_ID),
            tf.TensorSpec([None], tf.int32, name=names.K),
        ])
        def recommend(self, user_id, k):
            n = tf.maximum(tf.reduce_max(tf.concat([k, [0]], 0)), 0)
            rows = tf.shape(user_id)[0]
            cols = tf.tile(tf.range(n)[None, :], [rows, 1])
            ids = tf.strings.join([tf.repeat(user_id[:, None], n, axis=1), tf.strings.as_string(cols)], "/")
            mask = cols < k[:, None]
            return {
                names.OUT_ITEM_IDS: tf.where(mask, ids, ""),
                names.OUT_SCORES: tf.where(mask, tf.cast(cols, tf.float32) + offset, float("-inf")),
            }

        @tf.function(input_signature=[
            tf.TensorSpec([None, 2], tf.float32, name="x"),
            tf.TensorSpec([None], tf.string, name=names.USER_ID),
        ])
        def score(self, x, user_id):
            calls = self.calls.assign_add(1)
            return {
                "sum": tf.reduce_sum(x, axis=1) + offset,
                "user": user_id,
                "calls": tf.fill([tf.shape(x)[0]], calls),
            }

    return Model()


def recommend_request(model: str, user_ids=("u1", "u2"), k=(2, 3), signature=names.RECOMMEND_SIGNATURE,
                      version: int | None = None, label: str | None = None) -> predict_pb2.PredictRequest:
    """A PredictRequest for the recommend signature."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs[names.USER_ID].CopyFrom(tf.make_tensor_proto(np.array(user_ids, dtype=object)))
    request.inputs[names.K].CopyFrom(tf.make_tensor_proto(np.array(k, dtype=np.int32)))
    return request


def score_request(model: str, x, user_ids) -> predict_pb2.PredictRequest:
    """A PredictRequest for the per-row score signature."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = SCORE_SIGNATURE
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, dtype=np.float32)))
    request.inputs[names.USER_ID].CopyFrom(tf.make_tensor_proto(np.array(user_ids, dtype=object)))
    return request


def save_model(path: str, version: int, warmup: str = "good") -> str:
    """Exports the test model to `path` with a warmup file.

    Args:
        warmup: "good" (a recommend and a score request), "bad" (a request naming
            an input the model lacks) or "none" (no warmup file).
    """
    module = _make_module(version)
    tf.saved_model.save(module, path, signatures={
        names.DEFAULT_SIGNATURE: module.recommend,
        names.RECOMMEND_SIGNATURE: module.recommend,
        SCORE_SIGNATURE: module.score,
    })
    if warmup == "good":
        write_warmup_requests(path, [recommend_request("ignored"), score_request("ignored", [[1, 2]], ["w"])])
    elif warmup == "bad":
        bad = recommend_request("ignored")
        bad.inputs["userid"].CopyFrom(bad.inputs.pop(names.USER_ID))
        write_warmup_requests(path, [bad])
    return path


def install_version(template: str, base_path: str, version: int) -> str:
    """Copies an exported model into base_path/<version> atomically (copy, then rename)."""
    os.makedirs(base_path, exist_ok=True)
    target = os.path.join(base_path, str(version))
    tmp = os.path.join(base_path, f".tmp-{version}")
    shutil.copytree(template, tmp)
    os.rename(tmp, target)
    return target


def make_templates(root: str) -> dict:
    """Exported model versions to copy into base paths: {1, 2, 3, "bad_warmup", "no_warmup"} -> path."""
    result = {v: save_model(os.path.join(root, f"v{v}"), v) for v in (1, 2, 3)}
    result["bad_warmup"] = save_model(os.path.join(root, "bad_warmup"), 1, warmup="bad")
    result["no_warmup"] = save_model(os.path.join(root, "no_warmup"), 1, warmup="none")
    return result


def make_base(tmp_path, templates, name: str, versions) -> str:
    """Creates tmp_path/<name> holding the given versions (keys of make_templates' dict); returns its path."""
    base = os.path.join(str(tmp_path), name)
    os.makedirs(base, exist_ok=True)
    for v in versions:
        install_version(templates[v], base, v)
    return base


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", poll_s: float = 0.02) -> None:
    """Polls ``predicate`` every ``poll_s`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")
