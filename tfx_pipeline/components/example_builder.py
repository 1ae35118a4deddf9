"""ExampleBuilder: canonical tables -> one Examples artifact with the splits of trainer/artifacts.py.

train / eval: interaction examples (time-based split); items: one example per
catalogue item (candidates to index); users: each user's latest state. One
artifact, so the stock Trainer, which takes a single examples channel, can reach
the candidates and user state; StatisticsGen, ExampleValidator and Transform are
told to use only train and eval.
"""


import json

from tfx.types import artifact_utils, standard_artifacts
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component


@component
def ExampleBuilder(
    config_json: Parameter[str],
    data_fingerprint: Parameter[str],
    beam_pipeline_args_json: Parameter[str],
    examples: OutputArtifact[standard_artifacts.Examples],
) -> None:
    """Reads and validates the dataset's tables, then runs the example-building Beam job.

    ``data_fingerprint`` (a digest of the input files and of the project's code) is an
    execution property only so that TFX's cache key changes when either does; the
    executor does not read it.
    """
    from tfx_pipeline.data import example_builder
    from tfx_pipeline.config import config_from_json
    from tfx_pipeline.data.tables import load_exposures, load_tables, selected_spans

    del data_fingerprint
    cfg = config_from_json(config_json)
    selected = selected_spans(cfg)  # once: every table of this run comes from the same spans
    events, users, items = load_tables(cfg, selected)
    counts = example_builder.build_examples(
        events, users, items, cfg, examples.uri,
        beam_pipeline_args=json.loads(beam_pipeline_args_json), exposures=load_exposures(cfg, selected),
    )
    examples.split_names = artifact_utils.encode_split_names(list(counts))
    if selected is not None:
        # Like ExampleGen: the artifact carries the span (and version) it was built for.
        examples.span = selected[-1].span
        if selected[-1].version is not None:
            examples.version = selected[-1].version
        examples.set_string_custom_property("spans_read", ",".join(str(s.span) for s in selected))
        print(f"[ExampleBuilder] span {selected[-1].span} (read spans {[s.span for s in selected]})", flush=True)
    print(f"[ExampleBuilder] examples per split: {counts}", flush=True)
