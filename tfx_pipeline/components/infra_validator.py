"""InfraValidator: loads a blessed model in the embedded model server and replays its warmup.

TFX's own InfraValidator needs a TF Serving binary or Docker, neither of which
exists here; this one starts serving/model_server on a free loopback port and
sends every warmup request over real gRPC. An unblessed model is not validated
(and so not pushed).
"""

from tfx.types import standard_artifacts
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component


@component
def InfraValidator(
    model: InputArtifact[standard_artifacts.Model],
    blessing: InputArtifact[standard_artifacts.ModelBlessing],
    infra_blessing: OutputArtifact[standard_artifacts.InfraBlessing],
    model_name: Parameter[str],
) -> None:
    import os

    from serving.fileio import write_json, write_text

    if not blessing.get_int_custom_property("blessed"):
        infra_blessing.set_int_custom_property("blessed", 0)
        print(f"[InfraValidator] {model_name}: model not blessed, not validated", flush=True)
        return
    from serving.model_server import infra_validate
    from trainer.artifacts import serving_dir

    try:
        report = infra_validate(serving_dir(model.uri), model_name)
    except Exception as e:  # the reason is recorded and printed; Pusher then skips the model
        infra_blessing.set_int_custom_property("blessed", 0)
        write_text(os.path.join(infra_blessing.uri, "INFRA_NOT_BLESSED"), f"{type(e).__name__}: {e}\n")
        print(f"[InfraValidator] {model_name}: FAILED, will not be pushed: {e}", flush=True)
        return
    infra_blessing.set_int_custom_property("blessed", 1)
    write_json(os.path.join(infra_blessing.uri, "INFRA_BLESSED"), report, default=str)
    print(f"[InfraValidator] {model_name}: served {report['requests_ok']}/{report['requests_sent']} warmup "
          f"requests over gRPC", flush=True)
