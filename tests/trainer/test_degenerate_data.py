"""A log without times (constant timestamp: every history empty, context constant), constant side
features and a catalogue far larger than the events, through example building, Transform and
both trainers (tests/support/tiny_pipeline.py ``degenerate_tables``; bench/degenerate_log.py is
the full-size generator). Each used to crash or refuse without a clear message: tf.data's
unbatch() of the [B, 0] history killed the ranking trainer with SIGSEGV."""

from __future__ import annotations

import glob
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import trainer  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from trainer import features as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A batch (256) larger than the train rows (~96 after validation): the trainers cut it to fit.
TRAINER_CFG = {
    "retrieval": {"epochs": 2, "batch_size": 256, "embedding_dim": 8, "max_k": 20},
    "ranking": {"epochs": 2, "batch_size": 256, "embedding_dim": 8, "deep_units": [16], "num_cross_layers": 1},
    "baseline": {"iterations": 2},
}


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory):
    from tests.support.tiny_pipeline import build_tiny_pipeline, degenerate_tables

    return build_tiny_pipeline(str(tmp_path_factory.mktemp("degenerate")), make_tables=degenerate_tables)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_examples_have_empty_histories_and_constant_context(degenerate):
    files = glob.glob(os.path.join(degenerate.examples_uri, "Split-train", "*"))
    spec = {F.HISTORY_ITEM_IDS: tf.io.VarLenFeature(tf.string), F.HOUR_OF_DAY: tf.io.FixedLenFeature([1], tf.int64),
            F.HOURS_SINCE_PREV_EVENT: tf.io.FixedLenFeature([1], tf.float32)}
    batch = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(10_000)
                      .map(lambda b: tf.io.parse_example(b, spec))))
    assert batch[F.HISTORY_ITEM_IDS].values.shape[0] == 0  # every history empty
    assert len(np.unique(batch[F.HOUR_OF_DAY].numpy())) == 1
    assert np.all(batch[F.HOURS_SINCE_PREV_EVENT].numpy() == 0.0)


def test_all_empty_lists_unbatch_without_crashing():
    """to_model_inputs gives an all-empty history [B, 1] of padding, not [B, 0]; tf.data's unbatch()
    of a zero-size component is a SIGSEGV in TF 2.16, so this runs in a child process."""
    code = (
        "import trainer, tensorflow as tf\n"
        "from trainer import features as F\n"
        "from trainer.model_inputs import FeatureLayout, to_model_inputs\n"
        "layout = FeatureLayout(sizes={}, user_cats=(), user_nums=(), item_cats=(), item_lists=(), item_nums=(),\n"
        "                       list_features=(F.HISTORY_IDX,))\n"
        "empty = tf.sparse.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], tf.int64), [4, 0])\n"
        "rows = to_model_inputs({F.HISTORY_IDX: empty, F.RATING_LABEL: tf.ones([4])}, layout)\n"
        "assert rows[F.HISTORY_IDX].shape == (4, 1), rows[F.HISTORY_IDX].shape\n"
        "out = [r[F.HISTORY_IDX].numpy().tolist() for r in tf.data.Dataset.from_tensors(rows).unbatch()]\n"
        "assert out == [[0]] * 4, out\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_retrieval_trains_on_the_degenerate_log(degenerate, tmp_path):
    from trainer.hparams import trainer_config
    from trainer.retrieval.train import train_and_export

    m = train_and_export(degenerate.examples_uri, degenerate.transform_dir, str(tmp_path / "m" / "Format-Serving"),
                         str(tmp_path / "run"), degenerate.side_features, degenerate.history_length,
                         trainer_config(TRAINER_CFG))
    assert m["num_eval_users"] > 0
    for part in ("model", "popularity"):
        assert all(_finite(m[part][k]) for k in ("recall@10", "recall@100", "ndcg@10")), m[part]
    assert os.path.exists(tmp_path / "m" / "Format-Serving" / "saved_model.pb")


def test_ranking_trains_on_the_degenerate_log(degenerate, tmp_path):
    from trainer.hparams import trainer_config
    from trainer.ranking.train import train_and_export

    m = train_and_export(degenerate.examples_uri, degenerate.transform_dir, str(tmp_path / "m" / "Format-Serving"),
                         str(tmp_path / "run"), degenerate.side_features, degenerate.history_length,
                         trainer_config(TRAINER_CFG))
    assert m["num_eval_examples"] == 30 and m["num_train_examples"] > 0
    for part in ("model", "baseline"):
        assert _finite(m[part]["rmse"]) and _finite(m[part]["auc"]), m
    assert os.path.exists(tmp_path / "m" / "Format-Serving" / "saved_model.pb")
