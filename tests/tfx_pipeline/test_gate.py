"""Both gate outcomes, on hand-made metrics."""

from trainer.gate import decide
from trainer.hparams import GateConfig, trainer_config

import pytest


def _retrieval(r100, pop=0.3, als=0.2, ndcg=0.2, als_ndcg=0.1):
    """Hand-made retrieval metrics.json; ``als=None``: one written before the ALS baseline existed."""
    m = {"model": {"recall@100": r100, "ndcg@10": ndcg}, "popularity": {"recall@100": pop}}
    if als is not None:
        m["als"] = {"recall@100": als, "ndcg@10": als_ndcg}
    return m


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


def test_model_that_loses_to_als_is_not_blessed_and_the_reason_says_so():
    # Beats popularity (0.3) but not ALS on Recall@100.
    d = decide("retrieval", _retrieval(0.2470, als=0.2510), None, GateConfig())
    assert not d["blessed"]
    assert not d["checks"]["lift_over_baseline_recall_at_100"]["ok"]
    assert d["checks"]["lift_over_baseline_ndcg_at_10"]["ok"]
    assert ("lift_over_baseline_recall_at_100: recall@100 0.2470 < 1.0 x ALS 0.2510: "
            "the model loses to the ALS baseline") in d["reasons"]
    # Losing on NDCG@10 alone is enough to be refused too.
    d = decide("retrieval", _retrieval(0.40, als=0.30, ndcg=0.15, als_ndcg=0.16), None, GateConfig())
    assert not d["blessed"] and [r for r in d["reasons"] if r.startswith("lift_over_baseline_ndcg_at_10")] == [
        "lift_over_baseline_ndcg_at_10: NDCG@10 0.1500 < 1.0 x ALS 0.1600: the model loses to the ALS baseline"]


def test_model_that_beats_als_is_blessed_and_the_factor_applies():
    d = decide("retrieval", _retrieval(0.40, als=0.35, ndcg=0.20, als_ndcg=0.18), None, GateConfig())
    assert d["blessed"], d
    assert d["checks"]["lift_over_baseline_recall_at_100"]["ok"] and d["checks"]["lift_over_baseline_ndcg_at_10"]["ok"]
    # 0.40 < 1.2 x 0.35: a required lift of 1.2 refuses it; 0 turns the check off altogether.
    assert not decide("retrieval", _retrieval(0.40, als=0.35, ndcg=0.20, als_ndcg=0.1),
                      None, GateConfig(min_lift_over_baseline=1.2))["blessed"]
    off = decide("retrieval", _retrieval(0.40, als=0.9, ndcg=0.2, als_ndcg=0.9), None,
                 GateConfig(min_lift_over_baseline=0.0))
    assert off["blessed"] and not any("baseline" in name for name in off["checks"])


def test_unavailable_baseline_fails_the_gate_plainly_and_disabled_is_noted():
    failed = _retrieval(0.40)
    failed["als"] = {"unavailable": "als could not be fit: ValueError: no train interaction", "disabled": False}
    d = decide("retrieval", failed, None, GateConfig())
    assert not d["blessed"] and all("baseline unavailable (als could not be fit" in r
                                    for r in d["reasons"] if r.startswith("lift_over_baseline"))
    # metrics.json of a model trained before the baseline existed: no "als" at all.
    d = decide("retrieval", _retrieval(0.40, als=None), None, GateConfig())
    assert not d["blessed"] and "baseline unavailable (metrics.json has no ALS entry" in " ".join(d["reasons"])
    assert decide("retrieval", _retrieval(0.40, als=None), None, GateConfig(min_lift_over_baseline=0))["blessed"]
    # Disabled on purpose (trainer.baseline.enabled: false): blessed, and the reasons say it was not checked.
    disabled = _retrieval(0.40)
    disabled["als"] = {"unavailable": "disabled by trainer.baseline.enabled: false", "disabled": True}
    d = decide("retrieval", disabled, None, GateConfig())
    assert d["blessed"] and d["checks"]["lift_over_baseline"]["skipped"]
    assert "lift_over_baseline: not checked: baseline unavailable (disabled by trainer.baseline.enabled: false)" \
        in d["reasons"]


def test_latest_blessed_metrics_without_als_are_still_a_baseline():
    d = decide("retrieval", _retrieval(0.40), _retrieval(0.45, als=None), GateConfig(max_recall_drop=0.01))
    assert not d["blessed"] and "latest blessed 0.4500" in " ".join(d["reasons"])
    assert decide("retrieval", _retrieval(0.445), _retrieval(0.45, als=None), GateConfig(max_recall_drop=0.01))["blessed"]


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
    cfg = trainer_config({"baseline": {"factors": 8, "enabled": False}, "gate": {"min_lift_over_baseline": 1.1}})
    assert (cfg.baseline.factors, cfg.baseline.enabled, cfg.gate.min_lift_over_baseline) == (8, False, 1.1)
    with pytest.raises(ValueError, match=r"trainer.baseline: unknown key\(s\) \['factor'\]"):
        trainer_config({"baseline": {"factor": 8}})
    with pytest.raises(ValueError, match="kind must be one of"):
        trainer_config({"baseline": {"kind": "bpr"}})
