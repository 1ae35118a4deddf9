"""Shared fixtures for the trainer tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """Examples + Transform graph of a tiny generated dataset (tests/support/tiny_pipeline.py), built once."""
    from tests.support.tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(str(tmp_path_factory.mktemp("tiny_pipeline")))


@pytest.fixture(scope="session")
def trained_retrieval(tiny_pipeline, tmp_path_factory):
    """A 2-epoch GRU retrieval run on the tiny pipeline: (out dir, metrics, side features), trained once."""
    from trainer.hparams import trainer_config
    from trainer.retrieval.train import train_and_export

    out = tmp_path_factory.mktemp("retrieval")
    examples, transform, side, hist = tiny_pipeline
    metrics = train_and_export(examples, transform, str(out / "model" / "Format-Serving"), str(out / "run"), side, hist,
                               trainer_config({"retrieval": {"epochs": 2, "batch_size": 64, "history_encoder": "gru"},
                                               "evaluation": {"min_group_users": 2}}))
    return out, metrics, side
