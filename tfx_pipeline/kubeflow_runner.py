"""Compiles the same pipeline definition for Kubeflow Pipelines v2 / Vertex AI.

Offline: writes the pipeline spec JSON; submit it with the KFP SDK or the Vertex
console. Paths in the config should point at shared storage (gs://...) for a
cluster run, and Beam args at a distributed runner (see README, "Scaling out").
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tfx import v1 as tfx

from tfx_pipeline.config import PipelineConfig
from tfx_pipeline.wiring.pipeline import ALL_STAGES, create_pipeline

DEFAULT_IMAGE = "ghcr.io/example/recsys-pipeline:0.1.0"


def compile_pipeline(cfg: PipelineConfig, output: str | Path, image: str = DEFAULT_IMAGE,
                     stage: str = ALL_STAGES, beam_pipeline_args: Optional[list[str]] = None) -> Path:
    # Inputs are resolved when the run starts (the latest span on shared storage), not
    # now; with spans every (recurring) run is for new data, so task caching is off,
    # otherwise a daily run would be answered from the cache with yesterday's examples.
    pipeline = create_pipeline(cfg, stage=stage, beam_pipeline_args=beam_pipeline_args, metadata_path=None,
                               fingerprint_inputs=False, enable_cache=cfg.data.spans is None)
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
