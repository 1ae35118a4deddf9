"""Inputs for an exported ranking model's ``score`` signature (trainer/ranking/export.py)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from serving import names


def score_query(score, user_ids, **override) -> dict:
    """Query inputs of the ``score`` signature for these users, everything but the user id unknown.

    History "" (a known user's stored history is used), context -1, user features NaN / "";
    ``override`` replaces any input by name. Candidates (``names.CANDIDATE_ITEM_IDS``) are not included.
    """
    spec = score.structured_input_signature[1]
    n = len(user_ids)
    q = {names.USER_ID: tf.constant(user_ids), names.HISTORY_ITEM_IDS: tf.constant([[""]] * n),
         names.HOUR_OF_DAY: tf.constant([-1] * n, tf.int64), names.DAY_OF_WEEK: tf.constant([-1] * n, tf.int64),
         names.HOURS_SINCE_PREV_EVENT: tf.constant([-1.0] * n)}
    for key, s in spec.items():
        if key not in q and key != names.CANDIDATE_ITEM_IDS:
            q[key] = tf.constant([float("nan")] * n) if s.dtype == tf.float32 else tf.constant([""] * n)
    q.update({k: tf.constant(v) for k, v in override.items()})
    return q


def pair_engagement(serving_dir: str, user_ids, item_ids) -> np.ndarray:
    """The saved ranking model's engagement probability of each (user, item) pair, [N]."""
    score = tf.saved_model.load(serving_dir).signatures[names.SCORE_SIGNATURE]
    out = score(**score_query(score, [str(u) for u in user_ids]),
                **{names.CANDIDATE_ITEM_IDS: tf.constant([[str(i)] for i in item_ids])})
    return out[names.OUT_ENGAGEMENT].numpy()[:, 0]
