"""The README's main job: pipeline, then the model server, then a recommendation printed."""

from __future__ import annotations

import time

from serving import names
from tfx_pipeline.config import PipelineConfig


def serving_config(cfg: PipelineConfig):
    """TF Serving's ModelServerConfig for every model pushed for this dataset."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for model in names.ALL_MODELS:
        base = cfg.serving_root / model
        if not base.is_dir():
            continue
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = model, str(base), "tensorflow"
        entry.model_version_policy.latest.num_versions = 2
    return config


def first_user(cfg: PipelineConfig) -> str:
    from tfx_pipeline.data.tables import load_tables

    return str(load_tables(cfg)[0]["user_id"].iloc[0])


def run_demo(cfg: PipelineConfig, user: str | None = None, k: int = 10, port: int = 8500, rest_port: int = 8501,
             keep_serving: bool = True) -> int:
    from serving.model_server import ModelServer
    from serving.recommend_cli import main as recommend_main
    from tfx_pipeline.local_runner import run_local
    from tfx_pipeline.summary import print_summary

    run_local(cfg)
    print_summary(cfg)
    config = serving_config(cfg)
    served = [c.name for c in config.model_config_list.config]
    if names.RETRIEVAL_MODEL not in served:
        print("[demo] no retrieval model was pushed (not blessed?); see the gate verdicts above")
        return 1
    server = ModelServer(config, grpc_port=port, rest_port=rest_port, metrics_port=0)
    server.start()
    try:
        server.wait_until_available(timeout=300)
        print(f"[demo] model server: gRPC {server.grpc_address}, REST {server.rest_url}, models {served}")
        user = user or first_user(cfg)
        argv = ["--user", user, "--k", str(k), "--target", server.grpc_address]
        if names.RANKING_MODEL not in served:
            argv.append("--no-rank")
        print(f"[demo] recsys recommend {' '.join(argv)}")
        rc = recommend_main(argv)
        if rc != 0 or not keep_serving:
            return rc
        print(f"[demo] serving on {server.grpc_address} (gRPC) and {server.rest_url} (REST); "
              f"try: recsys recommend --user {user} --target {server.grpc_address}. Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
