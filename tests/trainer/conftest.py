"""Shared fixtures for the trainer tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """Examples + Transform graph of a tiny generated dataset (tests/support/tiny_pipeline.py), built once."""
    from tests.support.tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(str(tmp_path_factory.mktemp("tiny_pipeline")))
