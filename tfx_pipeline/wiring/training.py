"""Wiring of the training half: trainers, gates, index, infra validation, push."""

from __future__ import annotations

import json
import posixpath

from tfx import v1 as tfx
from tfx.types import standard_artifacts

from serving import names
from tfx_pipeline import component_ids as ids
from tfx_pipeline.cache_keys import code_fingerprint
from tfx_pipeline.components.atomic_pusher import AtomicPusher
from tfx_pipeline.components.index_builder import IndexBuilder
from tfx_pipeline.components.infra_validator import InfraValidator
from tfx_pipeline.components.model_gate import ModelGate
from tfx_pipeline.components.recommender_builder import RecommenderBuilder
from tfx_pipeline.config import PipelineConfig, resolve_path
from tfx_pipeline.data.schema_tools import string_domain_sizes
from trainer.gate import ranking_eval_config, ranking_slice_features
from trainer.artifacts import EVAL, TRAIN
from trainer.hparams import sections as config_sections
from trainer.typed_config import to_dict



def _latest_blessed(trainer_id: str, gate_id: str):
    """The latest blessed model from this trainer, by ML Metadata (the change baseline and the
    warm-start source). `recsys rollback` unblesses a rolled-back model (rollback.py), so
    this stock strategy, local or compiled for Kubeflow, skips it."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=standard_artifacts.Model, producer_component_id=trainer_id),
        model_blessing=tfx.dsl.Channel(type=standard_artifacts.ModelBlessing, producer_component_id=gate_id),
    ).with_id(ids.latest_blessed(trainer_id))


def _pusher(model_channel, blessing, infra_blessing, cfg: PipelineConfig, model_name: str):
    # TFX's Pusher, writing each version to a temporary sibling and renaming it into place.
    return AtomicPusher(
        model=model_channel,
        model_blessing=blessing,
        infra_blessing=infra_blessing,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=posixpath.join(cfg.serving_location, model_name))),
    ).with_id(ids.pusher(model_name))


def _tuners(trainer_cfg, sections: dict, common: dict) -> dict:
    """kind -> TFX Tuner (trainer/tuning.py) when ``trainer.tuning.enabled``; none otherwise."""
    if not trainer_cfg.tuning.enabled:
        return {}
    tuners = {}
    for kind, tuner_id in ids.TUNERS.items():
        # Only this model's section and the tuning settings: the other model's changes keep the cache.
        custom_config = {**common["custom_config"], "trainer": {kind: sections[kind], "tuning": sections["tuning"],
                                                                "selection": sections["selection"]}}
        tuners[kind] = tfx.components.Tuner(tuner_fn=f"trainer.tuning.{kind}_tuner_fn",
                                            **{**common, "custom_config": custom_config}).with_id(tuner_id)
    return tuners


def _best_hyperparameters(tuners: dict, kind: str):
    return tuners[kind].outputs["best_hyperparameters"] if kind in tuners else None


def training_components(cfg: PipelineConfig, example_builder, schema_gen, transform) -> list:
    trainer_cfg = cfg.trainer  # typed and checked when the config was loaded
    sections = config_sections(trainer_cfg)
    # Each component gets only the sections it uses, so changing the gate re-runs the
    # gate and not the trainers (TFX's cache key includes every execution property).
    custom_config = {
        "side_features": cfg.side_features(),
        "history_length": cfg.examples.history_length,
        "sequence_length": cfg.examples.state_length,  # the user state's items (the sequence objective's window)
        "split": to_dict(cfg.examples.split),  # the trainers carve their validation split the same way
        "trainer": {"retrieval": sections["retrieval"], "ranking": sections["ranking"],
                    "warm_start": sections["warm_start"], "selection": sections["selection"],
                    "evaluation": sections["evaluation"], "baseline": sections["baseline"]},
        "code_fingerprint": code_fingerprint(),  # cache key follows code changes (see cache_keys.py)
    }
    gate_json = json.dumps(sections["gate"])
    index_json = json.dumps({"retrieval": sections["retrieval"], "index": sections["index"]})
    common = dict(
        examples=example_builder.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=[TRAIN]),
        eval_args=tfx.proto.EvalArgs(splits=[EVAL]),
        custom_config=custom_config,
    )
    # Optional KerasTuner search per model; the Trainer gets its best values (fn_args.hyperparameters).
    tuners = _tuners(trainer_cfg, sections, common)
    # The latest blessed model of each kind (ML Metadata): the trainers warm-start from it
    # (new ids get fresh rows; trainer/warm_start.py) and the gates compare against it.
    # With warm start off the trainers don't take it, so unchanged data stays CACHED (TFX's
    # cache key covers every input, and a new blessing is a new input).
    retrieval_baseline = _latest_blessed(ids.RETRIEVAL_TRAINER, ids.RETRIEVAL_GATE)
    ranking_baseline = _latest_blessed(ids.RANKING_TRAINER, ids.RANKING_GATE)
    warm = trainer_cfg.warm_start.enabled
    # Two-tower retrieval (trainer/retrieval/train.py): brute-force export + metrics.
    retrieval = tfx.components.Trainer(run_fn="trainer.retrieval.train.run_fn",
                                       base_model=retrieval_baseline.outputs["model"] if warm else None,
                                       hyperparameters=_best_hyperparameters(tuners, "retrieval"),
                                       **common).with_id(ids.RETRIEVAL_TRAINER)
    # DCN-v2 multitask ranking (trainer/ranking/train.py).
    ranking = tfx.components.Trainer(run_fn="trainer.ranking.train.run_fn",
                                     base_model=ranking_baseline.outputs["model"] if warm else None,
                                     hyperparameters=_best_hyperparameters(tuners, "ranking"),
                                     **common).with_id(ids.RANKING_TRAINER)
    # Bless only what clears the floors and does not regress against the latest blessed model.
    retrieval_gate = ModelGate(model=retrieval.outputs["model"], baseline_model=retrieval_baseline.outputs["model"],
                               kind="retrieval", gate_json=gate_json).with_id(ids.RETRIEVAL_GATE)
    # Ranking through TFMA: RMSE (rating head) and AUC (engagement head) on the eval split,
    # value thresholds and change thresholds against the latest blessed ranking model, on the
    # overall slice; the same metrics per value of the small categorical user features (by
    # trainer.evaluation.user_features and the curated schema's closed domains), not gated.
    slice_features = ranking_slice_features(trainer_cfg.evaluation, cfg.user_features(),
                                            string_domain_sizes(resolve_path(cfg.schema_dir) / "schema.pbtxt"))
    ranking_gate = tfx.components.Evaluator(
        examples=example_builder.outputs["examples"],
        model=ranking.outputs["model"],
        baseline_model=ranking_baseline.outputs["model"],
        eval_config=ranking_eval_config(trainer_cfg.gate, slice_features),
        example_splits=[EVAL],
    ).with_id(ids.RANKING_GATE)
    # ScaNN over every candidate; fails the run below the recall floor.
    index = IndexBuilder(model=retrieval.outputs["model"], model_run=retrieval.outputs["model_run"],
                         trainer_json=index_json).with_id(ids.INDEX_BUILDER)
    # The one-call models: retrieval -> filters -> ranking -> top k as one SavedModel, over
    # each retrieval export and the ranking export; blessed when both parts are.
    recommender = RecommenderBuilder(
        scann_model=index.outputs["scann_model"], brute_force_model=retrieval.outputs["model"],
        ranking_model=ranking.outputs["model"], retrieval_blessing=retrieval_gate.outputs["blessing"],
        ranking_blessing=ranking_gate.outputs["blessing"],
        num_candidates=trainer_cfg.retrieval.max_k).with_id(ids.RECOMMENDER_BUILDER)
    components = [retrieval, ranking, retrieval_baseline, ranking_baseline, retrieval_gate, ranking_gate, index,
                  recommender]
    components += list(tuners.values())

    served = (
        (names.RETRIEVAL_MODEL, index.outputs["scann_model"], retrieval_gate.outputs["blessing"]),
        (names.RETRIEVAL_BRUTE_FORCE_MODEL, retrieval.outputs["model"], retrieval_gate.outputs["blessing"]),
        (names.RANKING_MODEL, ranking.outputs["model"], ranking_gate.outputs["blessing"]),
        (names.RECOMMENDER_MODEL, recommender.outputs["recommender"], recommender.outputs["blessing"]),
        (names.RECOMMENDER_BRUTE_FORCE_MODEL, recommender.outputs["recommender_brute_force"],
         recommender.outputs["blessing"]),
    )
    for model_name, model_channel, blessing in served:
        # Load in the model server on a free port and replay the warmup requests.
        infra = InfraValidator(model=model_channel, blessing=blessing,
                               model_name=model_name).with_id(ids.infra_validator(model_name))
        # Versioned directory <serving base>/<model>/<version>/ when blessed and infra-blessed
        # (written to a temporary sibling, then renamed: atomic_pusher.py).
        pusher = _pusher(model_channel, blessing, infra.outputs["infra_blessing"], cfg, model_name)
        components += [infra, pusher]
    return components
