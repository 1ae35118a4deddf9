"""Split and file names inside the pipeline's artifacts: the one place they are defined.

Written by tfx_pipeline/ (ExampleBuilder writes the splits) and trainer/ (the run_fns
write the model and run files); read by the gates, the index step, the report, the
rollback, bench/ and the tests. Plain Python, no TensorFlow import.

Examples artifact (``<uri>/Split-<name>/*.gz``, GZIP tf.Example TFRecords)::

    train, eval     interaction examples (trainer/splits.py decides which)
    items           one example per catalogue item (the candidates)
    users           one example per user: the latest history and features
    latest_span     spans datasets: the newest span's examples again (validated alone)
    exposures       logged exposures without engagement (ranking negatives)

Model artifact (``<uri>/``)::

    Format-Serving/     the SavedModel TFX's Pusher copies (with assets.extra/ warmup)
    metrics.json        the model's evaluation, read by the gate (also in the ModelRun)
    warmstart/          trainable variables + vocabularies (trainer/warm_start.py)

ModelRun artifact: metrics.json, history.json, eval_queries.npy,
eval_query_users.npy, candidate_norms.npy (retrieval), feature_importance.json and
feature_importance_sample.json (ranking), tensorboard/.
"""

from __future__ import annotations

import os

# -- Examples splits -----------------------------------------------------------
TRAIN = "train"
EVAL = "eval"
INTERACTION_SPLITS = (TRAIN, EVAL)  # what the split strategies assign
CANDIDATES_SPLIT = "items"
USER_STATE_SPLIT = "users"
# Spans datasets only: the examples of the run's (newest) span, again, whatever their
# train/eval split, so the new span alone is validated and compared with the previous one.
LATEST_SPAN_SPLIT = "latest_span"
# Spans datasets with logged exposures (`recsys feedback build-span`): items shown and not
# acted on, as ranking negatives (engaged 0, no rating: the ranking trainer weighs their
# rating loss 0). Not interactions: no statistics, no schema check.
EXPOSURES_SPLIT = "exposures"
# Splits without statistics, schema checks or Transform analysis.
SIDE_SPLITS = (CANDIDATES_SPLIT, USER_STATE_SPLIT, EXPOSURES_SPLIT)
SPLIT_DIR = "Split-{}"

# -- Model and ModelRun artifacts ---------------------------------------------
SERVING_DIR = "Format-Serving"  # TFX's serving model directory inside a Model artifact
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
IMPORTANCE_FILE = "feature_importance.json"
# The rows feature_importance.json was computed on and the model's RMSE/AUC on them (ranking).
IMPORTANCE_SAMPLE_FILE = "feature_importance_sample.json"
# Retrieval: per catalogue item its train count, candidate embedding norm and popularity bucket
# (float64 [num_items, 3], trainer/retrieval/diagnosis.py); the report plots it.
CANDIDATE_NORMS_FILE = "candidate_norms.npy"
EVAL_QUERIES_FILE = "eval_queries.npy"
EVAL_QUERY_USERS_FILE = "eval_query_users.npy"
WARM_START_DIR = "warmstart"
TENSORBOARD_DIR = "tensorboard"
SAVED_MODEL_FILE = "saved_model.pb"


def split_dir(examples_uri: str, split: str) -> str:
    """``<examples_uri>/Split-<split>``."""
    return os.path.join(examples_uri, SPLIT_DIR.format(split))


def serving_dir(model_uri: str) -> str:
    """The SavedModel directory inside a Model artifact."""
    return os.path.join(model_uri, SERVING_DIR)
