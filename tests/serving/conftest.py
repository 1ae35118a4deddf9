"""Fixtures for the model server tests: exported test models and a running server."""

from __future__ import annotations

import os

import pytest

import serving  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from model_server_testlib import install_version, save_model


@pytest.fixture(scope="session")
def templates(tmp_path_factory) -> dict:
    """Exported model versions to copy into base paths: {1, 2, 3, "bad_warmup", "no_warmup"}."""
    root = tmp_path_factory.mktemp("templates")
    result = {v: save_model(str(root / f"v{v}"), v) for v in (1, 2, 3)}
    result["bad_warmup"] = save_model(str(root / "bad_warmup"), 1, warmup="bad")
    result["no_warmup"] = save_model(str(root / "no_warmup"), 1, warmup="none")
    return result


def make_base(tmp_path, templates, name: str, versions) -> str:
    """Creates tmp_path/<name> holding the given versions; returns its path."""
    base = os.path.join(str(tmp_path), name)
    os.makedirs(base, exist_ok=True)
    for v in versions:
        install_version(templates[v], base, v)
    return base
