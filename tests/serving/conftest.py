"""Fixtures for the model server tests: exported test models and a running server."""

from __future__ import annotations

import pytest

import serving  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tests.support.model_servers import make_templates


@pytest.fixture(scope="session")
def templates(tmp_path_factory) -> dict:
    """Exported model versions to copy into base paths: {1, 2, 3, "bad_warmup", "no_warmup"}."""
    return make_templates(str(tmp_path_factory.mktemp("templates")))
