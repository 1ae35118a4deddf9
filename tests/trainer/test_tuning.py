"""Optional KerasTuner step: config, search spaces, a real tiny search through TFX's Tuner
executor, the best values into the trainer config, and the pipeline wiring."""

from __future__ import annotations

import json
import os

import pytest

import trainer  # noqa: F401  (Keras 2 before TensorFlow)
from trainer import tuning
from trainer.hparams import (RankingHParams, RetrievalHParams, TuningConfig, hyperparameter_values, trainer_config,
                             with_tuned_values)

# Small models on the tiny dataset: two one-epoch trials per model.
TINY_TRAINER = {
    "retrieval": {"batch_size": 64, "id_embedding_dim": 8, "feature_embedding_dim": 4, "hidden_units": [16]},
    "ranking": {"batch_size": 64, "deep_units": [16]},
    # Seed 1: both retrieval trials sample the mean history encoder (the fastest to build).
    "tuning": {"enabled": True, "max_trials": 2, "epochs_per_trial": 1, "seed": 1},
}


# --- config ------------------------------------------------------------------------------

def test_tuning_config_defaults_off():
    cfg = trainer_config({})
    assert cfg.tuning == TuningConfig()
    assert cfg.tuning.enabled is False and cfg.tuning.algorithm == "random"
    assert cfg.tuning.max_trials >= 1 and cfg.tuning.epochs_per_trial >= 1


def test_tuning_config_parses_and_rejects_bad_values():
    cfg = trainer_config({"tuning": {"enabled": True, "max_trials": 8, "algorithm": "bayesian"}}).tuning
    assert (cfg.enabled, cfg.max_trials, cfg.algorithm, cfg.epochs_per_trial) == (True, 8, "bayesian", 2)
    with pytest.raises(ValueError, match="unknown key"):
        trainer_config({"tuning": {"max_trial": 3}})
    with pytest.raises(ValueError, match="true/false"):
        trainer_config({"tuning": {"enabled": "yes"}})
    with pytest.raises(ValueError, match="integer"):
        trainer_config({"tuning": {"max_trials": 2.5}})
    with pytest.raises(ValueError, match="algorithm"):
        trainer_config({"tuning": {"algorithm": "grid"}})
    with pytest.raises(ValueError, match=">= 1"):
        trainer_config({"tuning": {"epochs_per_trial": 0}})


# --- search spaces -----------------------------------------------------------------------

@pytest.mark.parametrize("kind,cls,names", [
    ("retrieval", RetrievalHParams, {"learning_rate", "temperature", "embedding_dim", "history_encoder"}),
    ("ranking", RankingHParams, {"learning_rate", "embedding_dim", "num_cross_layers", "dropout"}),
])
def test_search_spaces(kind, cls, names):
    space = tuning.SEARCH_SPACES[kind]()
    assert {p.name for p in space.space} == names
    # Every name is a trainer hyper-parameter; the space's defaults are the trainer defaults.
    defaults = cls()
    for name, value in space.values.items():
        assert value == getattr(defaults, name), name
    # Defaults and sampled values all parse as a trainer config.
    with_tuned_values(trainer_config({}), kind, hyperparameter_values(space.get_config()))
    import keras_tuner as kt

    oracle = tuning.make_oracle(TuningConfig(max_trials=5, seed=1), kind)
    assert isinstance(oracle, kt.oracles.RandomSearchOracle)
    assert oracle.objective.name == tuning.OBJECTIVES[kind][0]
    assert isinstance(tuning.make_oracle(TuningConfig(algorithm="bayesian"), kind),
                      kt.oracles.BayesianOptimizationOracle)
    for seed in range(5):
        sampled = kt.HyperParameters()
        for p in space.space:
            sampled.values[p.name] = p.random_sample(seed + 17)
        with_tuned_values(trainer_config({}), kind, hyperparameter_values(sampled.values))


# --- best values -> trainer config -------------------------------------------------------

def test_tuned_values_into_the_trainer_config():
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Float("learning_rate", 1e-4, 1e-1, sampling="log")
    hp.Choice("embedding_dim", [16, 32, 64])
    hp.values.update({"learning_rate": 0.0042, "embedding_dim": 16})
    # The form run_fn gets: HyperParameters.get_config() through the Tuner's JSON file.
    hparams = json.loads(json.dumps(hp.get_config()))
    assert hyperparameter_values(hparams) == {"learning_rate": 0.0042, "embedding_dim": 16}
    cfg = trainer_config({"retrieval": {"epochs": 3, "embedding_dim": 128}, "ranking": {"epochs": 1}})
    out = with_tuned_values(cfg, "retrieval", hyperparameter_values(hparams))
    assert (out.retrieval.embedding_dim, out.retrieval.learning_rate, out.retrieval.epochs) == (16, 0.0042, 3)
    assert out.ranking == cfg.ranking
    assert cfg.retrieval.embedding_dim == 128  # not modified

    # HyperParameters object, plain values, no tuner; KerasTuner's own entries dropped.
    assert hyperparameter_values(hp) == {"learning_rate": 0.0042, "embedding_dim": 16}
    assert hyperparameter_values({"dropout": 0.2, "tuner/epochs": 3}) == {"dropout": 0.2}
    assert hyperparameter_values(None) == {}
    assert with_tuned_values(cfg, "ranking", {}) is cfg
    with pytest.raises(ValueError, match="not trainer.ranking keys"):
        with_tuned_values(cfg, "ranking", hyperparameter_values({"values": {"temperature": 0.1}}))
    with pytest.raises(ValueError, match="history_encoder"):
        with_tuned_values(cfg, "retrieval", {"history_encoder": "lstm"})
    with pytest.raises(ValueError, match="expected an integer"):
        with_tuned_values(cfg, "ranking", {"num_cross_layers": "two"})


# --- a real tiny search through TFX's Tuner executor -------------------------------------

def _run_tuner_executor(tiny, kind: str, root) -> tuple[dict, list]:
    """TFX's Tuner executor on the tiny pipeline's artifacts; (best_hyperparameters, tuner_results)."""
    from tfx.components.tuner import executor
    from tfx.dsl.components.base import base_executor
    from tfx.types import artifact_utils, standard_artifacts
    from tfx.types import standard_component_specs as specs
    from tfx.utils import proto_utils
    from tfx import v1 as tfx

    examples = standard_artifacts.Examples()
    examples.uri = tiny.examples_uri
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    graph = standard_artifacts.TransformGraph()
    graph.uri = tiny.transform_dir
    best = standard_artifacts.HyperParameters()
    best.uri = str(root / "best_hyperparameters")
    results = standard_artifacts.TunerResults()
    results.uri = str(root / "tuner_results")
    custom_config = {"side_features": tiny.side_features, "history_length": tiny.history_length,
                     "trainer": {kind: TINY_TRAINER[kind], "tuning": TINY_TRAINER["tuning"]}}
    exec_properties = {
        specs.TUNER_FN_KEY: f"trainer.tuning.{kind}_tuner_fn",
        specs.TRAIN_ARGS_KEY: proto_utils.proto_to_json(tfx.proto.TrainArgs(splits=["train"])),
        specs.EVAL_ARGS_KEY: proto_utils.proto_to_json(tfx.proto.EvalArgs(splits=["eval"])),
        specs.CUSTOM_CONFIG_KEY: json.dumps(custom_config),
    }
    context = base_executor.BaseExecutor.Context(tmp_dir=str(root / "tmp"), unique_id=kind)
    executor.Executor(context).Do(
        {specs.EXAMPLES_KEY: [examples], specs.TRANSFORM_GRAPH_KEY: [graph]},
        {specs.BEST_HYPERPARAMETERS_KEY: [best], specs.TUNER_RESULTS_KEY: [results]},
        exec_properties)
    # As the Trainer executor reads it into fn_args.hyperparameters.
    with open(os.path.join(best.uri, "best_hyperparameters.txt")) as fh:
        hyperparameters = json.load(fh)
    with open(os.path.join(results.uri, "tuner_results.json")) as fh:
        return hyperparameters, json.load(fh)


@pytest.mark.parametrize("kind", ["retrieval", "ranking"])
def test_tiny_search_gives_best_hyperparameters(tiny_pipeline, tmp_path, kind):
    hyperparameters, results = _run_tuner_executor(tiny_pipeline, kind, tmp_path)
    space = tuning.SEARCH_SPACES[kind]()
    assert set(hyperparameters) == {"space", "values"}
    assert set(hyperparameters["values"]) == {p.name for p in space.space}
    # Two completed trials, scored by the objective, best first; the best one is what the Trainer gets.
    assert len(results) == 2 and all(r["score"] is not None for r in results)
    _, direction = tuning.OBJECTIVES[kind]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=direction == "max")
    assert {k: results[0][k] for k in hyperparameters["values"]} == hyperparameters["values"]

    out = with_tuned_values(trainer_config({kind: {"epochs": 5}}), kind, hyperparameter_values(hyperparameters))
    hp = getattr(out, kind)
    for key, value in hyperparameters["values"].items():
        assert getattr(hp, key) == value
    assert hp.epochs == 5


# --- pipeline wiring ---------------------------------------------------------------------

def _pipeline(tmp_path, **trainer_over):
    from tfx_pipeline.config import load_config
    from tfx_pipeline.wiring.pipeline import create_pipeline

    cfg = load_config("configs/implicit_demo.yaml", {"pipeline_root": str(tmp_path / "run"),
                                                     "serving_base_path": str(tmp_path / "serving"),
                                                     "trainer": trainer_over})
    return {c.id: c for c in create_pipeline(cfg).components}


def test_pipeline_has_tuners_only_when_enabled(tmp_path):
    off = _pipeline(tmp_path)
    assert not [c for c in off.values() if c.type.endswith(".Tuner")]
    assert "hyperparameters" not in off["RetrievalTrainer"].inputs
    assert "hyperparameters" not in off["RankingTrainer"].inputs

    on = _pipeline(tmp_path, tuning={"enabled": True, "max_trials": 3})
    assert set(on) - set(off) == {"RetrievalTuner", "RankingTuner"}
    for kind, tuner_id, trainer_id in (("retrieval", "RetrievalTuner", "RetrievalTrainer"),
                                       ("ranking", "RankingTuner", "RankingTrainer")):
        tuner = on[tuner_id]
        assert tuner.exec_properties["tuner_fn"] == f"trainer.tuning.{kind}_tuner_fn"
        # The Tuner reads what the Trainer reads.
        for key in ("examples", "transform_graph", "schema"):
            assert tuner.inputs[key].producer_component_id == on[trainer_id].inputs[key].producer_component_id
        # The Trainer's hyperparameters input is this Tuner's best_hyperparameters output.
        channel = on[trainer_id].inputs["hyperparameters"]
        assert channel.producer_component_id == tuner_id and channel.output_key == "best_hyperparameters"
        assert tuner in on[trainer_id].upstream_nodes
        cc = json.loads(tuner.exec_properties["custom_config"])
        assert set(cc["trainer"]) == {kind, "tuning", "selection"} and cc["trainer"]["tuning"]["max_trials"] == 3
        # Everything else the Trainer gets is unchanged by enabling tuning.
        assert on[trainer_id].exec_properties == off[trainer_id].exec_properties


def test_tuning_section_does_not_change_trainer_config(tmp_path):
    # The Trainers' custom_config carries no tuning settings: changing them re-runs only the Tuners.
    a = _pipeline(tmp_path, tuning={"enabled": True, "max_trials": 2})
    b = _pipeline(tmp_path, tuning={"enabled": True, "max_trials": 5})
    assert a["RetrievalTrainer"].exec_properties == b["RetrievalTrainer"].exec_properties
    assert a["RetrievalTuner"].exec_properties != b["RetrievalTuner"].exec_properties



def test_time_budget_stops_starting_trials(tmp_path):
    """No trial starts once the budget is spent; without a budget every trial runs."""
    import time as _time

    def trial_fn(values):
        _time.sleep(0.05)
        return {"val_selection": float(values["learning_rate"])}

    def run(budget, name):
        tuner = tuning.make_tuner(tuning.make_oracle(TuningConfig(max_trials=4, seed=0), "retrieval"), trial_fn,
                                  time_budget_s=budget, directory=str(tmp_path), project_name=name, overwrite=True)
        tuner.search()
        return len(tuner.oracle.trials)

    assert run(0.01, "budget") == 1
    assert run(0.0, "no_budget") == 4
    with pytest.raises(ValueError, match="time_budget_s"):
        trainer_config({"tuning": {"time_budget_s": -1}})


def test_sequence_objective_search_space_leaves_out_the_order_free_encoder():
    space = tuning.SEARCH_SPACES["retrieval"](RetrievalHParams(objective="sequence"))
    choices = {p.name: p for p in space.space}["history_encoder"].values
    assert "attention" not in choices and {"mean", "gru", "sasrec"} <= set(choices)
    default = {p.name: p for p in tuning.SEARCH_SPACES["retrieval"]().space}["history_encoder"].values
    assert "attention" in default
