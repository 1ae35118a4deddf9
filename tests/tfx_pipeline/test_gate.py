"""Both gate outcomes, on hand-made metrics."""

from trainer.gate import decide
from trainer.hparams import GateConfig, parse_trainer_config

import pytest


def _retrieval(r100, pop=0.3):
    return {"model": {"recall@100": r100}, "popularity": {"recall@100": pop}}


def test_first_retrieval_model_above_popularity_is_blessed():
    d = decide("retrieval", _retrieval(0.4), None, GateConfig())
    assert d["blessed"] and not d["has_baseline"]


def test_retrieval_below_popularity_is_rejected():
    d = decide("retrieval", _retrieval(0.25), None, GateConfig())
    assert not d["blessed"] and "lift_over_popularity" in d["reasons"][0]


def test_retrieval_regression_against_latest_blessed_is_rejected():
    d = decide("retrieval", _retrieval(0.40), _retrieval(0.45), GateConfig(max_recall_drop=0.01))
    assert not d["blessed"] and "latest blessed 0.4500" in " ".join(d["reasons"])
    assert decide("retrieval", _retrieval(0.445), _retrieval(0.45), GateConfig(max_recall_drop=0.01))["blessed"]


def test_ranking_floors_and_change_thresholds():
    cur = {"model": {"auc": 0.70, "rmse": 0.95}}
    assert decide("ranking", cur, None, GateConfig())["blessed"]
    assert not decide("ranking", cur, {"model": {"auc": 0.75, "rmse": 0.95}}, GateConfig())["blessed"]
    assert not decide("ranking", cur, {"model": {"auc": 0.70, "rmse": 0.90}}, GateConfig())["blessed"]
    assert not decide("ranking", {"model": {"auc": 0.49, "rmse": 0.9}}, None, GateConfig())["blessed"]


def test_trainer_config_is_strict():
    assert parse_trainer_config({"retrieval": {"epochs": 2}}).retrieval.epochs == 2
    with pytest.raises(ValueError, match="unknown key"):
        parse_trainer_config({"retrieval": {"epoch": 2}})
    with pytest.raises(ValueError, match="expected an integer"):
        parse_trainer_config({"ranking": {"epochs": "two"}})
