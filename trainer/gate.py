"""The evaluation gate's decision: absolute floors, lift over the baseline, no regression.

Pure function over the metrics the trainers write (``metrics.json`` beside each
model), so both outcomes are tested without training anything.
"""

from __future__ import annotations

import json
import os

from trainer.hparams import GateConfig

METRICS_FILE = "metrics.json"


def read_model_metrics(model_uri: str) -> dict:
    path = os.path.join(model_uri, METRICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the trainer wrote no metrics; cannot evaluate this model")
    with open(path) as fh:
        return json.load(fh)


def decide(kind: str, current: dict, baseline: dict | None, gate: GateConfig) -> dict:
    """Returns {"blessed": bool, "reasons": [...], "checks": {...}}."""
    reasons, checks = [], {}

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
        if baseline is not None:
            prev = baseline["model"]["recall@100"]
            check("no_regression", r100 >= prev - gate.max_recall_drop,
                  f"recall@100 {r100:.4f} vs latest blessed {prev:.4f} (max drop {gate.max_recall_drop})")
    elif kind == "ranking":
        auc, rmse = m["auc"], m["rmse"]
        check("min_auc", auc >= gate.min_auc, f"AUC {auc:.4f} vs floor {gate.min_auc}")
        check("max_rmse", rmse <= gate.max_rmse, f"RMSE {rmse:.4f} vs ceiling {gate.max_rmse}")
        if baseline is not None:
            b = baseline["model"]
            check("no_auc_regression", auc >= b["auc"] - gate.max_auc_drop,
                  f"AUC {auc:.4f} vs latest blessed {b['auc']:.4f} (max drop {gate.max_auc_drop})")
            check("no_rmse_regression", rmse <= b["rmse"] + gate.max_rmse_increase,
                  f"RMSE {rmse:.4f} vs latest blessed {b['rmse']:.4f} (max increase {gate.max_rmse_increase})")
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    if not reasons:
        reasons.append("all checks passed" + (" (first model: no baseline)" if baseline is None else ""))
    return {"blessed": all(c["ok"] for c in checks.values()), "reasons": reasons, "checks": checks,
            "has_baseline": baseline is not None}
