"""What TFX's cache key must also cover: the input tables' bytes and our own code.

TFX caches a component's execution on its inputs and execution properties. Two things
it cannot see are passed in as execution properties by the wiring:

- ``data_fingerprint``: a digest of the input tables (our ExampleBuilder reads files
  named in the config, not an upstream artifact), so changed data re-runs it;
- ``code_fingerprint``: a digest of the project's sources, for the components that run
  our code by module path (ExampleBuilder, Transform, Trainers): without it an
  upgraded trainer would be answered from the cache with a model built by old code.
"""

from __future__ import annotations

import hashlib

from tfx_pipeline.config import REPO_ROOT, PipelineConfig

SOURCE_PACKAGES = ("tfx_pipeline", "trainer", "serving")


def data_fingerprint(cfg: PipelineConfig) -> str:
    """Digest of the input tables' bytes; with spans, of every span the run reads."""
    from tfx_pipeline.data.tables import input_files

    h = hashlib.sha256()
    for path in input_files(cfg):
        h.update(str(path).encode())
        if path.exists():
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:24]


def code_fingerprint() -> str:
    """Digest of the project's pipeline, trainer and serving sources."""
    h = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(REPO_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
