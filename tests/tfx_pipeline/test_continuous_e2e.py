"""The daily loop, for real: span 1, then span 2 with new users and items.

LocalDagRunner runs the whole pipeline on span 1 and the model server serves what
it pushes; span 2 arrives (new users, new items), the next run validates it against
span 1's statistics, warm-starts both trainers from the latest blessed models
(new ids get fresh rows), the gates compare against those models, and the server
switches to the new versions; rolling span 2 back returns the server to span 1's.
A gate that refuses (the regression check against the latest blessed model:
tests/tfx_pipeline/test_gate.py) pushes nothing while the server keeps serving: the
second run of tests/tfx_pipeline/test_pipeline_e2e.py.
"""

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from tfx_pipeline.config import load_config
from tfx_pipeline.local_runner import run_local
from tests.support.pipeline_configs import implicit_demo

pytestmark = pytest.mark.e2e

NEW_USERS = [f"new-u{i:02d}" for i in range(12)]
NEW_ITEMS = [f"sku-new-{i}" for i in range(4)]


def _cfg(tmp_path, gate=None):
    return implicit_demo(tmp_path, gate, name="implicit_daily",
                         data={"fetch": "none", "spans": {"base": str(tmp_path / "spans")},
                               "events": {"path": "events.csv"}})


def _make_spans(tmp_path):
    """span-1 (70% of the demo log) in place; span-2 (the rest + new users on new items) kept aside."""
    from tfx_pipeline.data.datasets import ensure_dataset
    from tfx_pipeline.data.span_tools import make_spans

    source = load_config("configs/implicit_demo.yaml")
    ensure_dataset(source)
    make_spans(source, tmp_path / "cut", 2, first_fraction=0.7)
    span2 = pd.read_csv(tmp_path / "cut" / "span-2" / "events.csv", dtype=str)
    rng = np.random.default_rng(3)
    start = pd.Timestamp(span2["event_time"].max())
    rows = []
    for u, user in enumerate(NEW_USERS):
        t = start + pd.Timedelta(hours=u)
        for j in range(8):
            item = NEW_ITEMS[(u + j) % len(NEW_ITEMS)] if j % 2 == 0 else span2["sku"].iloc[int(rng.integers(len(span2)))]
            rows.append((user, item, (t + pd.Timedelta(hours=3 * j)).isoformat(), "click" if j % 3 else "purchase"))
    span2 = pd.concat([span2, pd.DataFrame(rows, columns=span2.columns)], ignore_index=True)
    (tmp_path / "spans").mkdir()
    shutil.copytree(tmp_path / "cut" / "span-1", tmp_path / "spans" / "span-1")
    return span2


def _served_version(address, model="retrieval"):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving import names

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = names.RECOMMEND_SIGNATURE
    inputs = {names.USER_ID: np.array([b"u0001"], dtype=object), names.HISTORY_ITEM_IDS: np.array([[b""]], dtype=object),
              names.HOUR_OF_DAY: np.array([-1]), names.DAY_OF_WEEK: np.array([-1]),
              names.HOURS_SINCE_PREV_EVENT: np.array([-1.0], np.float32), names.K: np.array([3], np.int32),
              names.EXCLUDE_HISTORY: np.array([True])}
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    resp = stub.Predict(req, timeout=30)
    return resp.model_spec.version.value, [i.decode() for i in tf.make_ndarray(resp.outputs[names.OUT_ITEM_IDS])[0]]


def _versions(cfg, model="retrieval"):
    return sorted(int(p.name) for p in (cfg.serving_root / model).iterdir() if p.name.isdigit())


def _states(rows):
    return {r["component"]: r for r in rows}


def _wait_for_version(address, version, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got, _ = _served_version(address)
        if got == version:
            return got
        time.sleep(1)
    return _served_version(address)[0]


def test_span_2_warm_starts_passes_the_gate_and_switches_the_served_version(tmp_path):
    from serving.model_server import ModelServer
    from tfx_pipeline.demo import serving_config

    span2 = _make_spans(tmp_path)
    cfg = _cfg(tmp_path)

    # Day 1: span 1 only. No blessed model yet: cold start, pushed, served.
    first = _states(run_local(cfg))
    m1 = _model_metrics(first, "RetrievalTrainer")
    assert m1["warm_start"] == {"taken": False, "reason": "no blessed base model"}
    v1 = _versions(cfg)
    assert len(v1) == 1

    server = ModelServer(serving_config(cfg), grpc_port=0, rest_port=None, metrics_port=None, poll_interval_s=0.5)
    server.start()
    try:
        server.wait_until_available(timeout=180)
        assert _served_version(server.grpc_address)[0] == v1[0]

        # Day 2: span 2 arrives with new users and new items.
        (tmp_path / "spans" / "span-2").mkdir()
        span2.to_csv(tmp_path / "spans" / "span-2" / "events.csv", index=False)
        second = _states(run_local(cfg))
        assert all(second[c]["state"] == "COMPLETE" for c in ("ExampleBuilder", "DataGate", "RetrievalTrainer",
                                                              "RankingTrainer", "RetrievalGate", "RankingGate"))
        # The new span was validated against span 1's statistics.
        report = json.loads((_uri(second, "DataGate", "report") / "data_validation.json").read_text())
        assert report["span"] == 2 and report["previous_span"] == 1 and report["drift_vs_previous_run"]
        # Both trainers warm-started: known ids carried over, the new ones got fresh rows.
        for trainer in ("RetrievalTrainer", "RankingTrainer"):
            ws = _model_metrics(second, trainer)["warm_start"]
            assert ws["taken"], (trainer, ws)
            by_vocab = {v["vocabulary"]: v for v in ws["remapped"].values()}
            assert by_vocab["item_id_vocab"]["rows_carried"] > 0
            assert by_vocab["user_id_vocab"]["rows_carried"] > 0 and by_vocab["user_id_vocab"]["new_rows"] >= 1
        items = (_uri(second, "RetrievalTrainer", "model") / "warmstart" / "vocab" / "item_id_vocab").read_text()
        assert any(i in items.split("\n") for i in NEW_ITEMS)
        # The gate compared with the latest blessed model, blessed, and the new version is served.
        decision = json.loads((_uri(second, "RetrievalGate", "blessing") / "BLESSED").read_text())
        assert "no_regression" in decision["checks"]
        v2 = _versions(cfg)
        assert len(v2) == 2 and v2[-1] > v1[0]
        assert _wait_for_version(server.grpc_address, v2[-1]) == v2[-1]
        # Recommendations for a user first seen in span 2.
        from serving.client import RecommenderClient

        with RecommenderClient(server.grpc_address, timeout_s=30) as client:
            assert len(client.recommend(NEW_USERS[0], k=3, num_candidates=20)) == 3

        # Rolling span 2's retrieval back: the server returns to v1, and in the run's own
        # ML Metadata span 2's models are unblessed, so the baseline resolver (warm start,
        # gates) answers span 1's model again.
        from tfx_pipeline.rollback import rollback

        assert _latest_blessed_retrieval(cfg) == str(_uri(second, "RetrievalTrainer", "model"))
        message = rollback(cfg.serving_root / "retrieval", cfg.metadata_path)
        assert f"now serving {v1[0]}" in message and "marked rolled_back=1 and unblessed" in message, message
        assert _wait_for_version(server.grpc_address, v1[0]) == v1[0]
        assert _latest_blessed_retrieval(cfg) == str(_uri(first, "RetrievalTrainer", "model"))
        assert not [p for p in (cfg.serving_root / "retrieval").iterdir() if p.name.startswith(".tmp-")]
    finally:
        server.stop()


def _latest_blessed_retrieval(cfg) -> str:
    """The URI TFX's LatestBlessedModelStrategy resolves over the retrieval trainer's models and gate's blessings."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
    from tfx.types import artifact_utils

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(cfg.metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(config)

    def load(type_name, component):
        artifact_type = store.get_artifact_type(type_name)
        return [artifact_utils.deserialize_artifact(artifact_type, a) for a in store.get_artifacts_by_type(type_name)
                if f"/{component}/" in a.uri]

    result = LatestBlessedModelStrategy().resolve_artifacts(
        store, {"model": load("Model", "RetrievalTrainer"), "model_blessing": load("ModelBlessing", "RetrievalGate")})
    return result["model"][0].uri


def _uri(states, component, key):
    from pathlib import Path

    return Path(states[component]["outputs"][key])


def _model_metrics(states, trainer):
    return json.loads((_uri(states, trainer, "model") / "metrics.json").read_text())
