"""ModelGate: blesses a model only if it clears absolute floors, beats the popularity and
ALS baselines by the configured lifts, and does not regress.

Reads ``metrics.json`` written by the trainer beside the model (and by the latest
blessed model, resolved from ML Metadata by LatestBlessedModelStrategy), applies
trainer/gate.py, and writes a ModelBlessing the Pusher honours.
"""


from tfx.types import standard_artifacts
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component


@component
def ModelGate(
    model: InputArtifact[standard_artifacts.Model],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    kind: Parameter[str],
    gate_json: Parameter[str],
    baseline_model: InputArtifact[standard_artifacts.Model] = None,
) -> None:
    import json

    from serving.fileio import write_json
    from trainer.gate import decide, read_model_metrics
    from trainer.hparams import GateConfig
    from trainer.typed_config import build

    gate = build(GateConfig, json.loads(gate_json), "trainer.gate")
    current = read_model_metrics(model.uri)
    baseline = read_model_metrics(baseline_model.uri) if baseline_model is not None else None
    decision = decide(kind, current, baseline, gate)
    blessing.set_int_custom_property("blessed", 1 if decision["blessed"] else 0)
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    if baseline_model is not None:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
    write_json(f"{blessing.uri}/{'BLESSED' if decision['blessed'] else 'NOT_BLESSED'}", decision)
    verdict = "BLESSED" if decision["blessed"] else "NOT BLESSED"
    print(f"[ModelGate] {kind}: {verdict}" + "".join(f"\n  - {r}" for r in decision["reasons"]), flush=True)
