"""The real TFX pipeline under LocalDagRunner on the small implicit dataset.

Runs the data half (with caching and the anomaly stop), compiles the full
pipeline for Kubeflow offline, then runs the whole pipeline, serves the pushed
models on free loopback ports and asks for recommendations over gRPC.
"""

import json
import shutil

import numpy as np
import pytest

from tfx_pipeline.local_runner import run_local
from tests.support.pipeline_configs import implicit_demo

pytestmark = pytest.mark.e2e

DATA_COMPONENTS = {"ExampleBuilder", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataGate", "Transform"}


def _cfg(tmp_path, gate=None, **over):
    # Warm start off: a rerun on the same data then answers the trainers from TFX's cache
    # (a new blessing would be a new input to a warm-starting trainer); the daily loop's
    # warm start is tests/tfx_pipeline/test_continuous_e2e.py's.
    return implicit_demo(tmp_path, gate, {"warm_start": {"enabled": False}}, **over)


def test_data_half_runs_records_mlmd_and_caches(tmp_path):
    cfg = _cfg(tmp_path)
    first = run_local(cfg, stage="data")
    assert {r["component"] for r in first} >= DATA_COMPONENTS
    assert all(r["state"] == "COMPLETE" for r in first)
    second = run_local(cfg, stage="data")
    states = {r["component"]: r["state"] for r in second}
    assert states["ExampleBuilder"] == "CACHED" and states["Transform"] == "CACHED"
    # A validation threshold is DataGate's alone: the examples and their statistics stay cached.
    third = run_local(_cfg(tmp_path, validation={"skew_jsd": 0.25}), stage="data")
    states = {r["component"]: r["state"] for r in third}
    assert states["ExampleBuilder"] == "CACHED" and states["StatisticsGen"] == "CACHED", states
    assert states["Transform"] == "CACHED" and states["DataGate"] == "COMPLETE", states


def test_schema_anomaly_stops_before_transform(tmp_path):
    from tfx_pipeline.errors import find_user_error
    from tfx_pipeline.data.validation import DataValidationError

    # A purchase weight of 9 is outside the curated schema's rating domain [1, 3].
    cfg = _cfg(tmp_path, data={"events": {"event_weights": {"click": 1.0, "purchase": 9.0}}})
    with pytest.raises(Exception) as e:
        run_local(cfg, stage="data")
    found = find_user_error(e.value)
    assert isinstance(found, DataValidationError), e.value
    assert "'rating'" in str(found)
    assert not (cfg.root / "artifacts" / "Transform").exists()


def test_kubeflow_v2_compile_has_every_component(tmp_path):
    from tfx_pipeline.kubeflow_runner import compile_pipeline

    # A spec runs in pods: its tables are on shared storage (tests/tfx_pipeline/test_kubeflow_spec.py).
    cfg = _cfg(tmp_path, data={"events": {"path": "gs://example-bucket/implicit_demo/events.csv"}})
    out = compile_pipeline(cfg, tmp_path / "kfp" / "pipeline.json", image="example/recsys:test")
    spec = json.loads(out.read_text())
    tasks = set(spec["pipelineSpec"]["root"]["dag"]["tasks"])
    expected = DATA_COMPONENTS | {"RetrievalTrainer", "RankingTrainer", "RetrievalGate", "RankingGate", "IndexBuilder",
                                  "Push_retrieval", "Push_retrieval_brute_force", "Push_ranking", "RecommenderBuilder",
                                  "InfraValidate_recommender", "InfraValidate_recommender_brute_force",
                                  "Push_recommender", "Push_recommender_brute_force"}
    assert expected <= tasks, expected - tasks
    assert "example/recsys:test" in out.read_text()


def test_full_pipeline_pushes_and_serves(tmp_path):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving import names
    from serving.model_server import ModelServer
    from tfx_pipeline.demo import serving_config

    cfg = _cfg(tmp_path)
    rows = run_local(cfg)
    states = {r["component"]: r["state"] for r in rows}
    assert states["IndexBuilder"] == "COMPLETE" and states["RecommenderBuilder"] == "COMPLETE", states
    for model in names.ALL_MODELS:
        versions = [p for p in (cfg.serving_root / model).iterdir() if p.name.isdigit()]
        assert len(versions) == 1, (model, versions)

    # The stock-ops one-call model holds no ScaNN op (stock TF Serving loads it); the ScaNN one does.
    from tests.support.saved_model_ops import scann_ops

    def version_dir(model):
        (version,) = [p for p in (cfg.serving_root / model).iterdir() if p.name.isdigit()]
        return version

    assert not scann_ops(version_dir(names.RECOMMENDER_BRUTE_FORCE_MODEL))
    assert scann_ops(version_dir(names.RECOMMENDER_MODEL))

    server = ModelServer(serving_config(cfg), grpc_port=0, rest_port=None, metrics_port=None)
    server.start()
    try:
        server.wait_until_available(timeout=180)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_address))
        req = predict_pb2.PredictRequest()
        req.model_spec.name = names.RETRIEVAL_MODEL
        req.model_spec.signature_name = names.RECOMMEND_SIGNATURE
        inputs = {
            names.USER_ID: np.array([b"u0001", b"never-seen"], dtype=object),
            names.HISTORY_ITEM_IDS: np.array([[b""], [b"sku-0003"]], dtype=object),
            names.HOUR_OF_DAY: np.array([-1, 10]), names.DAY_OF_WEEK: np.array([-1, 2]),
            names.HOURS_SINCE_PREV_EVENT: np.array([-1.0, 1.0], np.float32),
            names.K: np.array([5, 3], np.int32), names.EXCLUDE_HISTORY: np.array([True, True]),
        }
        for k, v in inputs.items():
            req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
        resp = stub.Predict(req, timeout=30)
        ids = tf.make_ndarray(resp.outputs[names.OUT_ITEM_IDS])
        known = tf.make_ndarray(resp.outputs[names.OUT_KNOWN_USER])
        assert ids.shape == (2, 5) and all(i.startswith(b"sku-") for i in ids[0])
        assert list(known) == [True, False]
        assert b"sku-0003" not in ids[1][:3] and ids[1][3] == b""  # history excluded; k=3 for row 2

        # The pushed one-call model, one raw Predict carrying every input its recommend
        # signature lists (read from the served model's metadata).
        from tensorflow_serving.apis import get_model_metadata_pb2

        from trainer.recommender.export import neutral_inputs

        meta_req = get_model_metadata_pb2.GetModelMetadataRequest()
        meta_req.model_spec.name = names.RECOMMENDER_MODEL
        meta_req.metadata_field.append("signature_def")
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        assert stub.GetModelMetadata(meta_req, timeout=30).metadata["signature_def"].Unpack(sig_map)
        spec = sig_map.signature_def[names.RECOMMEND_SIGNATURE].inputs
        feature_keys = [k[len(names.FILTER_PREFIX):] for k in spec if k.startswith(names.FILTER_PREFIX)]
        one_call = {**inputs, **neutral_inputs(2, feature_keys),
                    names.EXCLUDE_ITEM_IDS: np.array([[b""], [b"sku-0010"]], dtype=object)}
        for key, info in spec.items():  # user side features (none in this dataset): unknown
            if key not in one_call:
                assert key.startswith("user_"), key
                one_call[key] = (np.array([b"", b""], dtype=object) if info.dtype == tf.string.as_datatype_enum
                                 else np.full(2, np.nan, np.float32))
        assert set(one_call) == set(spec), set(one_call) ^ set(spec)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = names.RECOMMENDER_MODEL
        req.model_spec.signature_name = names.RECOMMEND_SIGNATURE
        for k, v in one_call.items():
            req.inputs[k].CopyFrom(tf.make_tensor_proto(v, dtype=tf.dtypes.as_dtype(spec[k].dtype)))
        resp = stub.Predict(req, timeout=30)
        ids = tf.make_ndarray(resp.outputs[names.OUT_ITEM_IDS])
        used_history = tf.make_ndarray(resp.outputs[names.OUT_HISTORY_ITEM_IDS])
        assert ids.shape == (2, 5) and all(i.startswith(b"sku-") for i in ids[0]) and ids[1][3] == b""
        assert all(i.startswith(b"sku-") for i in ids[1][:3])
        assert any(used_history[0])  # u0001 sent none: the stored history was used
        assert not {h for h in used_history[0] if h} & set(ids[0])  # history excluded (the stored one)
        assert not {b"sku-0003", b"sku-0010"} & set(ids[1])  # sent history and exclude_item_ids excluded
        assert list(tf.make_ndarray(resp.outputs[names.OUT_KNOWN_USER])) == [True, False]
        assert all(tf.make_ndarray(resp.outputs[names.OUT_REASONS])[0])

        # The two-stage client and the CLI against the freshly pushed real models.
        from serving.client import RecommenderClient
        from serving.recommend_cli import main as recommend_main

        with RecommenderClient(server.grpc_address, timeout_s=30) as client:
            assert client.recommender_model == names.RECOMMENDER_MODEL
            assert names.RECOMMEND_SIGNATURE in client.signatures(names.RECOMMENDER_MODEL)  # pushed and served
            recs = client.recommend("u0001", k=5, num_candidates=30)
            assert len(recs) == 5 and len({r.item_id for r in recs}) == 5
            assert all(0.0 <= r.engagement <= 1.0 for r in recs)
            assert all(r.reason for r in recs)  # the one-call model explains from the stored history
            cold = client.recommend("never-seen", k=3, history=["sku-0003", "sku-0010"])
            assert len(cold) == 3 and not {"sku-0003", "sku-0010"} & {r.item_id for r in cold}
        # The two stages over the separate models rank the same candidates the same way.
        with RecommenderClient(server.grpc_address, timeout_s=30, recommender_model=None) as two_stage:
            again = two_stage.recommend("u0001", k=5, num_candidates=30)
            assert [r.engagement for r in again] == pytest.approx([r.engagement for r in recs], rel=1e-4)
        with RecommenderClient(server.grpc_address, timeout_s=30,
                               retrieval_model=names.RETRIEVAL_BRUTE_FORCE_MODEL) as stock:
            assert stock.recommender_model == names.RECOMMENDER_BRUTE_FORCE_MODEL
            assert len(stock.recommend("u0001", k=5)) == 5
        assert recommend_main(["--user", "u0001", "--k", "3", "--target", server.grpc_address]) == 0
    finally:
        server.stop()

    # Second run, same data, with a floor no model can reach: the gate refuses, the
    # pushers skip, and the served versions stay as they were.
    # Only the gate's section changed: the trainers are answered from the cache, the gates re-run.
    strict = _cfg(tmp_path, gate={"min_recall_at_100": 1.01, "min_auc": 1.01})
    rows = run_local(strict)
    states = {r["component"]: r["state"] for r in rows}
    assert states["RetrievalGate"] == "COMPLETE" and states["ExampleBuilder"] == "CACHED"
    assert states["RetrievalTrainer"] == "CACHED" and states["RankingTrainer"] == "CACHED", states
    for model in names.ALL_MODELS:
        versions = [p for p in (cfg.serving_root / model).iterdir() if p.name.isdigit()]
        assert len(versions) == 1, (model, versions)
