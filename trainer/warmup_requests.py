"""Warmup requests written beside each export (assets.extra/tf_serving_warmup_requests).

Real requests from the training data, so the first real request after a load finds
every signature traced and every table initialized.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving import names
from trainer import features as F


def _request(model: str, signature: str, inputs: dict) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    for key, value in inputs.items():
        req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return req


def query_inputs(users: dict, user_features: dict, rows: list[int], unknown: bool = False) -> dict:
    n = len(rows)
    hist = users[F.HISTORY_ITEM_IDS][rows]
    inputs = {
        names.USER_ID: np.array([b"__warmup_unknown__"] * n if unknown else users[F.USER_ID][rows], dtype=object),
        names.HISTORY_ITEM_IDS: hist if unknown else np.full((n, 1), b"", dtype=object),
        names.HOUR_OF_DAY: np.full(n, 12, np.int64),
        names.DAY_OF_WEEK: np.full(n, 2, np.int64),
        names.HOURS_SINCE_PREV_EVENT: np.full(n, -1.0, np.float32),
    }
    for key, kind in sorted(user_features.items()):
        inputs[key] = (np.full(n, np.nan, np.float32) if kind == F.NUMERIC else np.full(n, b"", dtype=object))
    return inputs


def write_retrieval_warmup(export_dir: str, users: dict, user_features: dict, item_ids, model: str = names.RETRIEVAL_MODEL) -> None:
    from serving.model_server.warmup_file import write_warmup_requests

    rows = list(range(min(2, len(users[F.USER_ID]))))
    reqs = []
    for unknown in (False, True):
        q = query_inputs(users, user_features, rows, unknown)
        reqs.append(_request(model, names.RECOMMEND_SIGNATURE, {
            **q, names.K: np.full(len(rows), 10, np.int32), names.EXCLUDE_HISTORY: np.ones(len(rows), bool)}))
        reqs.append(_request(model, names.QUERY_EMBEDDING_SIGNATURE, q))
    some_items = np.array([str(i).encode() for i in list(item_ids)[:3]] + [b"__warmup_unknown__"], dtype=object)
    reqs.append(_request(model, names.CANDIDATE_EMBEDDING_SIGNATURE, {names.ITEM_IDS_INPUT: some_items}))
    reqs.append(_request(model, names.ITEM_FEATURES_SIGNATURE, {names.ITEM_IDS_INPUT: some_items}))
    reqs.append(_request(model, names.POPULAR_SIGNATURE, {names.K: np.array([5], np.int32)}))
    write_warmup_requests(export_dir, reqs)


def write_ranking_warmup(export_dir: str, users: dict, user_features: dict, item_ids, model: str = names.RANKING_MODEL) -> None:
    from serving.model_server.warmup_file import write_warmup_requests

    rows = list(range(min(2, len(users[F.USER_ID]))))
    cands = np.array([[str(i).encode() for i in list(item_ids)[:4]] + [b"__warmup_unknown__"]] * len(rows), dtype=object)
    reqs = [_request(model, names.SCORE_SIGNATURE, {**query_inputs(users, user_features, rows, unknown),
                                                    names.CANDIDATE_ITEM_IDS: cands}) for unknown in (False, True)]
    # explain (score's inputs): one record, so the first explanation after a load finds its gradient graph run.
    reqs.append(_request(model, names.EXPLAIN_SIGNATURE, {**query_inputs(users, user_features, rows),
                                                          names.CANDIDATE_ITEM_IDS: cands}))
    write_warmup_requests(export_dir, reqs)
