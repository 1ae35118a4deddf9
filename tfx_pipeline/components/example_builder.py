"""ExampleBuilder: canonical tables -> train/eval Examples, candidates, user state."""


import json

from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component


@component
def ExampleBuilder(
    config_json: Parameter[str],
    data_fingerprint: Parameter[str],
    beam_pipeline_args_json: Parameter[str],
    examples: OutputArtifact[standard_artifacts.Examples],
    candidates: OutputArtifact[standard_artifacts.Examples],
    user_state: OutputArtifact[standard_artifacts.Examples],
) -> None:
    """Reads and validates the dataset's tables, then runs the example-building Beam job.

    ``data_fingerprint`` (a digest of the input files) is an execution property only so
    that TFX's cache key changes when the data does; the executor does not read it.
    """
    from tfx_pipeline import example_builder, splits
    from tfx_pipeline.config import config_from_json
    from tfx_pipeline.tables import load_tables

    del data_fingerprint
    cfg = config_from_json(config_json)
    events, users, items = load_tables(cfg)
    counts = example_builder.build_examples(
        events, users, items, cfg, examples.uri, candidates.uri, user_state.uri,
        beam_pipeline_args=json.loads(beam_pipeline_args_json),
    )
    examples.split_names = artifact_utils.encode_split_names(list(splits.SPLIT_NAMES))
    candidates.split_names = artifact_utils.encode_split_names([example_builder.CANDIDATES_SPLIT])
    user_state.split_names = artifact_utils.encode_split_names([example_builder.USER_STATE_SPLIT])
    print(f"[ExampleBuilder] examples per split: {counts}", flush=True)
