"""Both gate outcomes, on hand-made metrics."""

from trainer.gate import decide
from trainer.hparams import GateConfig, trainer_config

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


def test_ranking_eval_config_carries_the_gate_thresholds():
    from serving import names
    from trainer.gate import ranking_eval_config

    cfg = ranking_eval_config(GateConfig(min_auc=0.6, max_rmse=1.2, max_auc_drop=0.02, max_rmse_increase=0.05))
    assert [m.signature_name for m in cfg.model_specs] == [names.EVAL_SIGNATURE] * 2
    assert [m.is_baseline for m in cfg.model_specs] == [False, True]
    by_output = {tuple(s.output_names): s.metrics[0] for s in cfg.metrics_specs if s.output_names}
    auc = by_output[(names.OUT_ENGAGEMENT,)].threshold
    rmse = by_output[(names.OUT_RATING,)].threshold
    assert auc.value_threshold.lower_bound.value == 0.6 and auc.change_threshold.absolute.value == -0.02
    assert rmse.value_threshold.upper_bound.value == 1.2 and rmse.change_threshold.absolute.value == 0.05


def test_trainer_config_is_strict():
    assert trainer_config({"retrieval": {"epochs": 2}}).retrieval.epochs == 2
    with pytest.raises(ValueError, match="unknown key"):
        trainer_config({"retrieval": {"epoch": 2}})
    with pytest.raises(ValueError, match="expected an integer"):
        trainer_config({"ranking": {"epochs": "two"}})
