"""A tiny SavedModel whose answers depend on an asset and on a sharded variable bundle.

For the version lifecycle tests: a copy missing its vocabulary, or one of its
variable shards, must never be served. `recommend` (serving/names.py's names)
looks each user id up in ``assets/users.txt`` (id -> line number, -1 unknown) and
answers ``item_ids = [str(line)]``, ``scores = [bias[line] + 100 * version]``,
where ``bias`` is split across two variables saved in separate shards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving import names
from serving.model_server.warmup_file import write_warmup_requests

NUM_USERS = 64
USERS = [f"u{i}" for i in range(NUM_USERS)]


def _bias(i: int) -> float:
    return float(i % 7)


def expected(user_id: str, version: int) -> tuple[str, float]:
    """The pristine model's (item id, score) for one user id."""
    line = USERS.index(user_id) if user_id in USERS else -1
    bias = _bias(line) if line >= 0 else 0.0
    return str(line), bias + 100.0 * version


def request(model: str, user_ids=("u3", "u40", "nobody")) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = names.RECOMMEND_SIGNATURE
    req.inputs[names.USER_ID].CopyFrom(tf.make_tensor_proto(np.array(user_ids, dtype=object)))
    req.inputs[names.K].CopyFrom(tf.make_tensor_proto(np.ones(len(user_ids), dtype=np.int32)))
    return req


def check_response(response, user_ids=("u3", "u40", "nobody")) -> str | None:
    """None when a PredictResponse equals the pristine model's for the version it names."""
    version = response.model_spec.version.value
    ids = [b.decode() for b in response.outputs[names.OUT_ITEM_IDS].string_val]
    scores = list(response.outputs[names.OUT_SCORES].float_val)
    want = [expected(u, version) for u in user_ids]
    got = list(zip(ids, scores))
    return None if got == want else f"version {version}: got {got}, pristine {want}"


def save_vocab_model(path: str, version: int) -> str:
    """Exports the model (two variable shards, one asset, a warmup file) to `path`."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab = os.path.join(tmp, "users.txt")
        with open(vocab, "w") as f:
            f.write("\n".join(USERS) + "\n")
        offset = 100.0 * version
        half = NUM_USERS // 2

        class Model(tf.Module):
            def __init__(self):
                super().__init__()
                init = tf.lookup.TextFileInitializer(
                    vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                    tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
                self.table = tf.lookup.StaticHashTable(init, -1)
                self.low = tf.Variable([_bias(i) for i in range(half)])
                self.high = tf.Variable([_bias(i) for i in range(half, NUM_USERS)])

            @tf.function(input_signature=[
                tf.TensorSpec([None], tf.string, name=names.USER_ID),
                tf.TensorSpec([None], tf.int32, name=names.K),
            ])
            def recommend(self, user_id, k):
                line = self.table.lookup(user_id)
                bias = tf.concat([self.low, self.high], 0)
                score = tf.where(line >= 0, tf.gather(bias, tf.maximum(line, 0)), 0.0) + offset
                return {names.OUT_ITEM_IDS: tf.strings.as_string(line)[:, None], names.OUT_SCORES: score[:, None]}

        module = Model()
        # A tiny shard size puts each variable in its own shard: variables.data-0000{0,1}-of-00002.
        options = tf.saved_model.SaveOptions(
            experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=64))
        tf.saved_model.save(module, path, signatures={names.RECOMMEND_SIGNATURE: module.recommend,
                                                      names.DEFAULT_SIGNATURE: module.recommend}, options=options)
    write_warmup_requests(path, [request("ignored")])
    return path


# Worst order for a server that loads once saved_model.pb appears: the graph first,
# then the variables, the vocabulary last.
def _copy_order(rel: str) -> tuple:
    first = ("saved_model.pb", "fingerprint.pb")
    rank = first.index(rel) if rel in first else 2 if rel.startswith("variables") else 3 if rel.startswith(
        "assets.extra") else 4
    return rank, rel


def slow_copy(src: str, dst: str, pause_s: float, on_file=None) -> list[str]:
    """Copies a SavedModel file by file into dst in place (no rename), pausing after each file.

    Args:
        on_file: optional callback(relative path), called after each file's pause.

    Returns:
        The files in the order written.
    """
    files = []
    for root, _, names_ in os.walk(src):
        files += [os.path.relpath(os.path.join(root, n), src) for n in names_]
    files.sort(key=_copy_order)
    for rel in files:
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dst, rel))
        time.sleep(pause_s)
        if on_file is not None:
            on_file(rel)
    return files
