"""Raw request inputs for a retrieval export's query signatures, shared by the served-score tests."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from serving import names
from trainer import features as F


def query_inputs(user_ids, side: dict, histories=None) -> dict:
    """``query_embedding`` inputs: the ids, each row's history (none by default; padded with ""),
    unknown context (-1) and unknown user features (NaN / "")."""
    n = len(user_ids)
    histories = histories or [[] for _ in user_ids]
    width = max(1, max(len(h) for h in histories))
    inputs = {names.USER_ID: tf.constant(user_ids),
              names.HISTORY_ITEM_IDS: tf.constant([list(h) + [b""] * (width - len(h)) for h in histories]),
              names.HOUR_OF_DAY: tf.constant([-1] * n, tf.int64), names.DAY_OF_WEEK: tf.constant([-1] * n, tf.int64),
              names.HOURS_SINCE_PREV_EVENT: tf.constant([-1.0] * n)}
    for key, kind in side.items():
        if key.startswith(F.USER_FEATURE_PREFIX):
            inputs[key] = tf.constant([np.nan] * n, tf.float32) if kind == F.NUMERIC else tf.constant([b""] * n)
    return inputs


def recommend_inputs(query: dict, k: int) -> dict:
    """``recommend`` inputs: ``query_inputs`` plus ``k`` and no history exclusion."""
    n = int(query[names.USER_ID].shape[0])
    return {**query, names.K: tf.constant([k] * n, tf.int32), names.EXCLUDE_HISTORY: tf.constant([False] * n)}


def assert_picked_on_grid(values: dict, picked: float, grid) -> None:
    """A validation pick: every grid value was scored and the best won, ties to the smaller."""
    values = {float(x): v for x, v in values.items()}
    assert set(values) == set(grid)
    best = max(values.values())
    assert picked == min(x for x, v in values.items() if v == best)


def scann_beside(run_dir, out_dir):
    """The ScaNN ``retrieval`` export built from a trainer run's brute-force one, as the index step
    does (every candidate fetched, recall floor 0.9): (ScaNN model, brute-force model), loaded."""
    from pathlib import Path

    import scann  # noqa: F401

    from trainer.retrieval.index import build_scann_export

    bf_dir = str(Path(run_dir) / "serving")
    queries = np.load(Path(run_dir) / "run" / "eval_queries.npy")
    bf = tf.saved_model.load(bf_dir)
    build_scann_export(bf_dir, str(out_dir), queries, max_k=10, fetch_k=int(bf.candidate_ids.shape[0]),
                       recall_floor=0.9)
    return tf.saved_model.load(str(out_dir)), bf
