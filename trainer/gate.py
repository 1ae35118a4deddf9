"""The evaluation gates.

Retrieval: ``decide``, a pure function over the metrics the retrieval trainer writes
(``metrics.json`` beside the model): absolute floor, lift over popularity, lift over
the classical baseline (ALS, ``"als"``) on Recall@100 and NDCG@10, no regression
against the latest blessed model. TFMA has no top-K retrieval metric over a full
catalogue with seen-item exclusion, hence this custom gate.

The classical baseline check (``min_lift_over_baseline``; 0 turns it off):

- ALS fit and evaluated: each metric must reach ``min_lift_over_baseline`` x ALS's.
- ALS disabled by the trainer config (``trainer.baseline.enabled: false``): not checked,
  and the reasons say so ("not checked: baseline unavailable ...").
- ALS unavailable otherwise (its fit failed, or a ``metrics.json`` written before the
  baseline existed has no ``"als"``): the check fails, "baseline unavailable": a model
  is not blessed on a comparison that could not be made. Set the factor to 0 (or
  disable the baseline) to gate without it.

The latest blessed model's ``metrics.json`` is only read for ``model.recall@100``, so
one written before the baseline existed is still a valid baseline.
Ranking: ``ranking_eval_config`` for TFX's Evaluator (TFMA).
"""

from __future__ import annotations

import json
import os

from trainer.artifacts import METRICS_FILE
from trainer.hparams import GateConfig



def read_model_metrics(model_uri: str) -> dict:
    path = os.path.join(model_uri, METRICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the trainer wrote no metrics; cannot evaluate this model")
    with open(path) as fh:
        return json.load(fh)


def decide(kind: str, current: dict, baseline: dict | None, gate: GateConfig) -> dict:
    """Returns {"blessed": bool, "reasons": [...], "checks": {...}}."""
    reasons, checks, notes = [], {}, []

    def check(name: str, ok: bool, detail: str) -> None:
        checks[name] = {"ok": bool(ok), "detail": detail}
        if not ok:
            reasons.append(f"{name}: {detail}")

    m = current["model"]
    if kind == "retrieval":
        r100, pop = m["recall@100"], current["popularity"]["recall@100"]
        check("min_recall_at_100", r100 >= gate.min_recall_at_100, f"recall@100 {r100:.4f} vs floor {gate.min_recall_at_100}")
        check("lift_over_popularity", r100 >= gate.min_lift_over_popularity * pop,
              f"recall@100 {r100:.4f} vs {gate.min_lift_over_popularity} x popularity {pop:.4f}")
        if gate.min_lift_over_baseline > 0:
            notes += lift_over_baseline(current, gate.min_lift_over_baseline, check, checks)
        if baseline is not None:
            prev = baseline["model"]["recall@100"]
            check("no_regression", r100 >= prev - gate.max_recall_drop,
                  f"recall@100 {r100:.4f} vs latest blessed {prev:.4f} (max drop {gate.max_recall_drop})")
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    if not reasons:
        reasons.append("all checks passed" + (" (first model: no baseline)" if baseline is None else ""))
    reasons += notes
    return {"blessed": all(c["ok"] for c in checks.values()), "reasons": reasons, "checks": checks,
            "has_baseline": baseline is not None}


# The metrics the classical baseline check compares: (metrics.json key, check name, label).
BASELINE_METRICS = (("recall@100", "lift_over_baseline_recall_at_100", "recall@100"),
                    ("ndcg@10", "lift_over_baseline_ndcg_at_10", "NDCG@10"))


def lift_over_baseline(current: dict, factor: float, check, checks: dict) -> list[str]:
    """The ALS checks of ``decide`` (see the module docstring); returns notes for the reasons."""
    als = current.get("als")
    name = "ALS"
    if als is None:
        als = {"unavailable": "metrics.json has no ALS entry (written before the baseline existed)"}
    if "unavailable" in als:
        why = als["unavailable"]
        if als.get("disabled"):
            note = f"not checked: baseline unavailable ({why})"
            checks["lift_over_baseline"] = {"ok": True, "skipped": True, "detail": note}
            return [f"lift_over_baseline: {note}"]
        for _, check_name, label in BASELINE_METRICS:
            check(check_name, False, f"baseline unavailable ({why}): cannot show the model's {label} reaches "
                                     f"{factor} x {name}; set trainer.gate.min_lift_over_baseline: 0 to gate without it")
        return []
    m = current["model"]
    for key, check_name, label in BASELINE_METRICS:
        ours, theirs = m[key], als[key]
        if ours >= factor * theirs:
            check(check_name, True, f"{label} {ours:.4f} >= {factor} x {name} {theirs:.4f}")
        else:
            check(check_name, False, f"{label} {ours:.4f} < {factor} x {name} {theirs:.4f}: "
                                     f"the model loses to the {name} baseline")
    return []


def ranking_eval_config(gate: GateConfig):
    """TFMA EvalConfig for the ranking model's Evaluator: RMSE of the rating head, AUC of
    the engagement head, each with an absolute threshold and a change threshold against
    the latest blessed model (TFMA skips change thresholds when there is no baseline)."""
    import tensorflow_model_analysis as tfma

    from serving import names
    from trainer import features as F

    def spec(name: str, is_baseline: bool = False):
        return tfma.ModelSpec(name=name, is_baseline=is_baseline, signature_name=names.EVAL_SIGNATURE,
                              label_keys={names.OUT_RATING: F.RATING_LABEL, names.OUT_ENGAGEMENT: F.ENGAGED_LABEL})

    rmse = tfma.MetricConfig(class_name="RootMeanSquaredError", threshold=tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(upper_bound={"value": gate.max_rmse}),
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.LOWER_IS_BETTER,
                                                     absolute={"value": gate.max_rmse_increase})))
    auc = tfma.MetricConfig(class_name="AUC", threshold=tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gate.min_auc}),
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                     absolute={"value": -gate.max_auc_drop})))
    return tfma.EvalConfig(
        model_specs=[spec("candidate"), spec("baseline", is_baseline=True)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[
            tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="ExampleCount")]),
            tfma.MetricsSpec(output_names=[names.OUT_RATING], metrics=[rmse]),
            tfma.MetricsSpec(output_names=[names.OUT_ENGAGEMENT], metrics=[auc]),
        ],
    )
