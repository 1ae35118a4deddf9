"""RecommenderBuilder: the one-call ``recommender`` and ``recommender_brute_force`` exports.

Composes the retrieval exports (IndexBuilder's ScaNN one, the RetrievalTrainer's brute-force
one) with the ranking export (trainer/recommender/export.py), unchanged. The composed
model is gated on its parts: its blessing is blessed only when both the retrieval gate and
the ranking gate (TFX's Evaluator) blessed their models, so it is pushed exactly when both
parts would be; InfraValidator then serves it and replays its warmup requests.
"""

from tfx.types import standard_artifacts
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component


@component
def RecommenderBuilder(
    scann_model: InputArtifact[standard_artifacts.Model],
    brute_force_model: InputArtifact[standard_artifacts.Model],
    ranking_model: InputArtifact[standard_artifacts.Model],
    retrieval_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    ranking_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    recommender: OutputArtifact[standard_artifacts.Model],
    recommender_brute_force: OutputArtifact[standard_artifacts.Model],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    num_candidates: Parameter[int] = 100,
) -> None:
    import os

    from serving import names
    from serving.fileio import copy_file, gfile, write_json
    from trainer.artifacts import METRICS_FILE, serving_dir
    from trainer.recommender.export import build

    parts = {"retrieval": retrieval_blessing, "ranking": ranking_blessing}
    refused = [kind for kind, b in parts.items() if not b.get_int_custom_property("blessed")]
    blessed = not refused
    blessing.set_int_custom_property("blessed", 1 if blessed else 0)
    blessing.set_string_custom_property("current_model", recommender.uri)
    decision = {"blessed": blessed, "parts": {k: bool(b.get_int_custom_property("blessed")) for k, b in parts.items()}}
    write_json(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), decision)
    if not blessed:
        print(f"[RecommenderBuilder] not built: the {' and '.join(refused)} model(s) were not blessed", flush=True)
        return
    ranking_dir = serving_dir(ranking_model.uri)
    for out, retrieval, name in ((recommender, scann_model, names.RECOMMENDER_MODEL),
                                 (recommender_brute_force, brute_force_model, names.RECOMMENDER_BRUTE_FORCE_MODEL)):
        build(serving_dir(retrieval.uri), ranking_dir, serving_dir(out.uri), name, num_candidates=num_candidates)
        metrics = os.path.join(retrieval.uri, METRICS_FILE)
        if gfile.exists(metrics):  # the retrieval metrics, as the ScaNN model carries them
            copy_file(metrics, os.path.join(out.uri, METRICS_FILE))
