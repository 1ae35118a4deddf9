"""Configs of the tiny real pipelines the e2e tests run (configs/implicit_demo.yaml, shrunk)."""

from __future__ import annotations

# Gates that bless whatever trains (each test tightens the threshold it is about).
LENIENT_GATE = {"min_auc": 0.0, "min_lift_over_popularity": 0.0, "min_lift_over_baseline": 0.0,
                "max_recall_drop": 1.0, "max_auc_drop": 1.0, "max_rmse_increase": 10.0}
# Two retrieval epochs and one ranking epoch: enough for the tiny log's signal, seconds each.
TINY_TRAINERS = {"retrieval": {"epochs": 2, "batch_size": 128}, "ranking": {"epochs": 1, "batch_size": 256}}


def implicit_demo(tmp_path, gate: dict | None = None, trainer: dict | None = None, **over):
    """configs/implicit_demo.yaml with its root and serving path under ``tmp_path``, the tiny
    trainers, ``LENIENT_GATE`` updated by ``gate``, ``trainer`` merged into the trainer section
    and ``over`` as further top-level overrides."""
    from tfx_pipeline.config import load_config

    base = {"pipeline_root": str(tmp_path / "run"), "serving_base_path": str(tmp_path / "serving"),
            "trainer": {**TINY_TRAINERS, **(trainer or {}), "gate": {**LENIENT_GATE, **(gate or {})}}}
    base.update(over)
    return load_config("configs/implicit_demo.yaml", base)
