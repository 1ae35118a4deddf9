"""DataGate: stops the run on schema anomalies, train/eval skew or run-to-run drift."""


from tfx.types import standard_artifacts
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component


@component
def DataGate(
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    schema: InputArtifact[standard_artifacts.Schema],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    config_json: Parameter[str],
    baseline_dir: Parameter[str],
    report: OutputArtifact[standard_artifacts.ExampleAnomalies],
) -> None:
    """Raises ``DataValidationError`` (failing the run before Transform) on any finding."""
    import posixpath

    from tfx_pipeline.config import config_from_json
    from tfx_pipeline.data.validation import LAST_REPORT_FILE, check_data

    cfg = config_from_json(config_json)
    # StatisticsGen copies the examples' span onto the statistics artifact.
    span = int(statistics.span) if cfg.data.spans is not None else None
    check_data(statistics.uri, schema.uri, anomalies.uri, cfg.validation, baseline_dir, report.uri, span=span,
               split_strategy=cfg.examples.split.strategy,
               last_report_path=posixpath.join(cfg.root_location, LAST_REPORT_FILE))  # keeps a URI whole
