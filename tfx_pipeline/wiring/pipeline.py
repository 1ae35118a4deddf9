"""The pipeline: the data half wired here, the training half in wiring/training.py.

Which components run, in what order, on which artifacts; no feature, model or data
logic (see the modules each component names). Cache keys: tfx_pipeline/cache_keys.py.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Optional

from tfx import v1 as tfx

from tfx_pipeline import component_ids as ids
from tfx_pipeline.cache_keys import code_fingerprint, data_fingerprint
from tfx_pipeline.components.data_gate import DataGate
from tfx_pipeline.components.example_builder import ExampleBuilder
from tfx_pipeline.config import PipelineConfig, ValidationConfig, resolve_path
from tfx_pipeline.wiring.training import training_components
from trainer.artifacts import SIDE_SPLITS, TRAIN
from trainer.hparams import TrainerConfig

DATA_STAGE = "data"
ALL_STAGES = "all"
DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


def create_pipeline(
    cfg: PipelineConfig,
    stage: str = ALL_STAGES,
    beam_pipeline_args: Optional[list[str]] = None,
    enable_cache: bool = True,
    metadata_path: Optional[str] = None,
    fingerprint_inputs: bool = True,
    schema_file: Optional[str] = None,
) -> tfx.dsl.Pipeline:
    """The pipeline for ``cfg``.

    ``fingerprint_inputs``: digest the input files now, so TFX's cache follows data
    changes (local runs). False for a compiled spec that runs later elsewhere (the
    files, and the latest span, are only known at run time).
    ``schema_file``: where ImportSchemaGen reads the curated schema; default: the
    checkout's ``<schema_dir>/schema.pbtxt`` (a compiled spec names the image's copy).
    """
    beam_args = list(beam_pipeline_args if beam_pipeline_args is not None else DEFAULT_BEAM_ARGS)
    # Data components get the config without the trainer/serving sections, so tuning a
    # model does not invalidate their cached outputs.
    data_cfg = dataclasses.replace(cfg, trainer=TrainerConfig(), serving_base_path="")
    config_json = data_cfg.to_json()
    # ExampleBuilder (and so StatisticsGen, ExampleValidator and Transform downstream of its
    # examples) does not read the validation thresholds: changing one re-runs DataGate only.
    examples_config_json = dataclasses.replace(data_cfg, validation=ValidationConfig()).to_json()
    components = []

    # Events + side tables -> train/eval examples, candidate items, user state.
    example_builder = ExampleBuilder(
        config_json=examples_config_json,
        data_fingerprint=f"{data_fingerprint(cfg) if fingerprint_inputs else 'at-run-time'}-{code_fingerprint()}",
        beam_pipeline_args_json=json.dumps(beam_args),
    ).with_id(ids.EXAMPLE_BUILDER)
    # Per-split statistics of the built examples.
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_builder.outputs["examples"], exclude_splits=list(SIDE_SPLITS)).with_id(ids.STATISTICS_GEN)
    # The curated, version-controlled schema (schemas/<dataset>/schema.pbtxt).
    schema_gen = tfx.components.ImportSchemaGen(
        schema_file=schema_file or str(resolve_path(cfg.schema_dir) / "schema.pbtxt")).with_id(ids.SCHEMA_GEN)
    # Anomalies of each split against the schema.
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"],
        exclude_splits=list(SIDE_SPLITS)).with_id(ids.EXAMPLE_VALIDATOR)
    # Stops the run on anomalies, train/eval skew, or drift from the last good run.
    data_gate = DataGate(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
        anomalies=example_validator.outputs["anomalies"],
        config_json=config_json,
        baseline_dir=posixpath.join(cfg.root_location, "drift_baseline"),
    ).with_id(ids.DATA_GATE)
    # Feature logic (trainer/preprocessing.py), analyzed on train. Not materialized:
    # the trainers apply the graph to raw examples (and export it inside the models).
    transform = tfx.components.Transform(
        examples=example_builder.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn="trainer.preprocessing.preprocessing_fn",
        custom_config={"side_features": cfg.side_features(), "code_fingerprint": code_fingerprint()},
        splits_config=tfx.proto.SplitsConfig(analyze=[TRAIN]),
        materialize=False,
    ).with_id(ids.TRANSFORM)
    transform.add_upstream_node(data_gate)
    components += [example_builder, statistics_gen, schema_gen, example_validator, data_gate, transform]

    if stage != DATA_STAGE:
        components += training_components(cfg, example_builder, schema_gen, transform)

    metadata = (
        tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
        if metadata_path else None
    )
    return tfx.dsl.Pipeline(
        # Kubeflow v2 accepts only [a-z0-9-] names; one name for both runners.
        pipeline_name=cfg.name.lower().replace("_", "-"),
        pipeline_root=posixpath.join(cfg.root_location, "artifacts"),
        metadata_connection_config=metadata,
        components=components,
        enable_cache=enable_cache,
        beam_pipeline_args=beam_args,
    )
