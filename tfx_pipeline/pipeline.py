"""Wiring only: which components run, in what order, on which artifacts.

No feature, model or data logic lives here (see the modules each component names).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Optional

from tfx import v1 as tfx

from tfx_pipeline.components.data_gate import DataGate
from tfx_pipeline.components.example_builder import ExampleBuilder
from tfx_pipeline.config import PipelineConfig, resolve_path
from tfx_pipeline.example_builder import SIDE_SPLITS

DATA_STAGE = "data"
ALL_STAGES = "all"
DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


def data_fingerprint(cfg: PipelineConfig) -> str:
    """Digest of the input tables' bytes, so TFX's cache misses when the data changes.

    With spans, every span the run reads counts, so a new span (or a new version of
    one) is a new cache key.
    """
    from tfx_pipeline.tables import input_files

    h = hashlib.sha256()
    for path in input_files(cfg):
        h.update(str(path).encode())
        if path.exists():
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:24]


def code_fingerprint() -> str:
    """Digest of the project's pipeline and trainer sources.

    Passed as an execution property to the components that run our code by module
    path (ExampleBuilder, Transform, Trainers): TFX's cache key covers execution
    properties, not the code behind a module path, so without it an upgraded
    trainer would be answered from the cache with a model built by the old code.
    """
    from tfx_pipeline.config import REPO_ROOT

    h = hashlib.sha256()
    for package in ("tfx_pipeline", "trainer", "serving"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(REPO_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def create_pipeline(
    cfg: PipelineConfig,
    stage: str = ALL_STAGES,
    beam_pipeline_args: Optional[list[str]] = None,
    enable_cache: bool = True,
    metadata_path: Optional[str] = None,
    fingerprint_inputs: bool = True,
) -> tfx.dsl.Pipeline:
    """The pipeline for ``cfg``.

    ``fingerprint_inputs``: digest the input files now, so TFX's cache follows data
    changes (local runs). False for a compiled spec that runs later elsewhere (the
    files, and the latest span, are only known at run time).
    """
    beam_args = list(beam_pipeline_args if beam_pipeline_args is not None else DEFAULT_BEAM_ARGS)
    # Data components get the config without the trainer/serving sections, so tuning a
    # model does not invalidate their cached outputs.
    config_json = dataclasses.replace(cfg, trainer={}, serving_base_path="").to_json()
    components = []

    # Events + side tables -> train/eval examples, candidate items, user state.
    example_builder = ExampleBuilder(
        config_json=config_json,
        data_fingerprint=f"{data_fingerprint(cfg) if fingerprint_inputs else 'at-run-time'}-{code_fingerprint()}",
        beam_pipeline_args_json=json.dumps(beam_args),
    )
    # Per-split statistics of the built examples.
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_builder.outputs["examples"], exclude_splits=SIDE_SPLITS)
    # The curated, version-controlled schema (schemas/<dataset>/schema.pbtxt).
    schema_gen = tfx.components.ImportSchemaGen(
        schema_file=str(resolve_path(cfg.schema_dir) / "schema.pbtxt"))
    # Anomalies of each split against the schema.
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"],
        exclude_splits=SIDE_SPLITS)
    # Stops the run on anomalies, train/eval skew, or drift from the last good run.
    data_gate = DataGate(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
        anomalies=example_validator.outputs["anomalies"],
        config_json=config_json,
        baseline_dir=str(cfg.root / "drift_baseline"),
    )
    # Feature logic (trainer/preprocessing.py), analyzed on train. Not materialized:
    # the trainers apply the graph to raw examples (and export it inside the models).
    transform = tfx.components.Transform(
        examples=example_builder.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn="trainer.preprocessing.preprocessing_fn",
        custom_config={"side_features": cfg.side_features(), "code_fingerprint": code_fingerprint()},
        splits_config=tfx.proto.SplitsConfig(analyze=["train"]),
        materialize=False,
    )
    transform.add_upstream_node(data_gate)
    components += [example_builder, statistics_gen, schema_gen, example_validator, data_gate, transform]

    if stage != DATA_STAGE:
        from tfx_pipeline.training_stage import training_components

        components += training_components(cfg, example_builder, schema_gen, transform)

    metadata = (
        tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
        if metadata_path else None
    )
    return tfx.dsl.Pipeline(
        # Kubeflow v2 accepts only [a-z0-9-] names; one name for both runners.
        pipeline_name=cfg.name.lower().replace("_", "-"),
        pipeline_root=str(cfg.root / "artifacts"),
        metadata_connection_config=metadata,
        components=components,
        enable_cache=enable_cache,
        beam_pipeline_args=beam_args,
    )
