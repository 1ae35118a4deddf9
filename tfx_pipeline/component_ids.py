"""TFX component ids of the pipeline: the one place they are defined.

They name each component's directory under ``<pipeline_root>/artifacts/`` and its
executions in ML Metadata, so the wiring, the run summary, the rollback, bench/ and
the tests all read them from here.
"""

EXAMPLE_BUILDER = "ExampleBuilder"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "ImportSchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
DATA_GATE = "DataGate"
TRANSFORM = "Transform"
DATA_COMPONENTS = (EXAMPLE_BUILDER, STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR, DATA_GATE, TRANSFORM)

RETRIEVAL_TRAINER = "RetrievalTrainer"
RANKING_TRAINER = "RankingTrainer"
TUNERS = {"retrieval": "RetrievalTuner", "ranking": "RankingTuner"}
RETRIEVAL_GATE = "RetrievalGate"
RANKING_GATE = "RankingGate"  # TFX's Evaluator (TFMA)
INDEX_BUILDER = "IndexBuilder"
RECOMMENDER_BUILDER = "RecommenderBuilder"  # the one-call models (tfx_pipeline/components/recommender_builder.py)


def latest_blessed(trainer_id: str) -> str:
    """The Resolver node that finds the latest blessed model of one trainer."""
    return f"LatestBlessed{trainer_id}"


def infra_validator(model_name: str) -> str:
    return f"InfraValidate_{model_name}"


def pusher(model_name: str) -> str:
    return f"Push_{model_name}"
