"""Compiles the same pipeline definition for Kubeflow Pipelines v2 / Vertex AI.

Offline: writes the pipeline spec JSON; submit it with the KFP SDK or the Vertex
console. The spec names no file of the compiling machine (kubeflow_paths.py): the
pipeline root, the serving base and the tables are on shared storage and pass through
untouched, the curated schema is the image's copy, and the Beam steps get the config's
``kubeflow.beam_pipeline_args`` (then ``beam_pipeline_args``), never the local runner's
in-memory DirectRunner args (see README, "Scaling out").
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tfx import v1 as tfx

from tfx_pipeline.config import PipelineConfig
from tfx_pipeline.kubeflow_paths import cluster_config, image_file
from tfx_pipeline.wiring.pipeline import ALL_STAGES, create_pipeline

DEFAULT_IMAGE = "ghcr.io/example/recsys-pipeline:0.1.0"


def compile_pipeline(cfg: PipelineConfig, output: str | Path, image: str = DEFAULT_IMAGE,
                     stage: str = ALL_STAGES, beam_pipeline_args: Optional[list[str]] = None) -> Path:
    cluster = cluster_config(cfg)  # ConfigError before anything is written
    beam_args = [*cfg.kubeflow.beam_pipeline_args, *(beam_pipeline_args or [])]
    # Inputs are resolved when the run starts (the latest span on shared storage), not
    # now; with spans every (recurring) run is for new data, so task caching is off,
    # otherwise a daily run would be answered from the cache with yesterday's examples.
    pipeline = create_pipeline(cluster, stage=stage, beam_pipeline_args=beam_args, metadata_path=None,
                               fingerprint_inputs=False, enable_cache=cfg.data.spans is None,
                               schema_file=image_file(f"{cfg.schema_dir}/schema.pbtxt", "schema_dir"))
    pipeline.metadata_connection_config = None  # the orchestrator owns MLMD on a cluster
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=str(output.parent),
        output_filename=output.name,
    )
    runner.run(pipeline, write_out=True)
    return output
