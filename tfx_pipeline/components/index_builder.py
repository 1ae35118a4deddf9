"""IndexBuilder: the ScaNN ``retrieval`` export over every candidate (trainer/retrieval/index.py)."""

from tfx.types import standard_artifacts
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component


@component
def IndexBuilder(
    model: InputArtifact[standard_artifacts.Model],
    model_run: InputArtifact[standard_artifacts.ModelRun],
    scann_model: OutputArtifact[standard_artifacts.Model],
    trainer_json: Parameter[str],
) -> None:
    """Fails the run when ScaNN's recall@10 against exact search is below the floor."""
    import os

    from serving.fileio import copy_file, load_npy
    from trainer.hparams import trainer_config
    from trainer.retrieval.index import build_scann_export
    from trainer.artifacts import EVAL_QUERIES_FILE, METRICS_FILE, serving_dir

    cfg = trainer_config(trainer_json)
    bf_dir = serving_dir(model.uri)
    queries = load_npy(os.path.join(model_run.uri, EVAL_QUERIES_FILE))
    import tensorflow as tf

    num_candidates = int(tf.saved_model.load(bf_dir).candidate_embeddings.shape[0])
    fetch_k = min(num_candidates, cfg.retrieval.max_k + cfg.retrieval.exclusion_pad)
    build_scann_export(bf_dir, serving_dir(scann_model.uri), queries, cfg.retrieval.max_k,
                       fetch_k, cfg.index.recall_floor, cfg.index.num_eval_queries, cfg.index.seed,
                       report_dir=scann_model.uri)
    copy_file(os.path.join(model.uri, METRICS_FILE), os.path.join(scann_model.uri, METRICS_FILE))
