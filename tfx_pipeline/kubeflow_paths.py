"""Where a compiled Kubeflow spec may point: shared storage, and the pipeline image's own files.

A compiled spec runs later, in pods on other machines: it must not name this
checkout's files. ``cluster_config`` checks every location a pod reads or writes
before anything is compiled (no TFX import) and raises ``ConfigError`` naming the key:

- shared locations (``pipeline_root``, ``serving_base_path``, the table paths or
  ``data.spans.base``) pass through untouched when they are a URI (gs://, s3://, ...) or
  an absolute path outside this checkout (a volume every pod mounts); a relative path
  (it resolves against this checkout) or one inside this checkout is refused;
- the curated schema is read from the image: ``deploy/docker/pipeline.Dockerfile``
  copies ``schemas/`` (and ``configs/``) to ``IMAGE_WORKDIR``, so ``schemas/<dataset>``
  becomes ``/pipeline/schemas/<dataset>``; a URI or outside path passes untouched.

Module references (executors, ``run_fn``, ``preprocessing_fn``) are import paths already,
resolved in the image's installed packages.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import PurePosixPath

from tfx_pipeline.config import REPO_ROOT, ConfigError, PipelineConfig, is_uri, resolve_path

IMAGE_WORKDIR = "/pipeline"  # pipeline.Dockerfile's WORKDIR in the runtime stage
IMAGE_DIRS = ("configs", "schemas")  # what it copies there from this checkout


def _in_checkout(path: str) -> str | None:
    """``path`` relative to this checkout (posix), or None when it lies outside."""
    try:
        return resolve_path(path).resolve().relative_to(REPO_ROOT.resolve()).as_posix()
    except ValueError:
        return None


def shared_location(value: str, key: str) -> str:
    """``value`` untouched, if every pod can reach it; else ``ConfigError`` saying what to give."""
    what = ("give a URI on shared storage (gs://bucket/..., s3://...) or an absolute path on a volume "
            f"every pod mounts, e.g. --set {key}=gs://my-bucket/...")
    if not value:
        raise ConfigError(f"{key} is not set: a Kubeflow run has no local default; {what}")
    if is_uri(value):
        return value
    if not os.path.isabs(os.path.expanduser(value)):
        raise ConfigError(f"{key} {value!r} is relative, so it would resolve against this checkout "
                          f"({REPO_ROOT}), which the pipeline's pods do not have; {what}")
    if _in_checkout(value) is not None:
        raise ConfigError(f"{key} {value!r} is inside this checkout ({REPO_ROOT}), which the pipeline's pods "
                          f"do not have; {what}")
    return value


def image_file(path: str, key: str) -> str:
    """Where the pods read ``path``: its copy in the image if the image carries it (under
    ``IMAGE_DIRS`` of this checkout), else ``shared_location``."""
    if not is_uri(path):
        rel = _in_checkout(path)
        if rel is not None and PurePosixPath(rel).parts[0] in IMAGE_DIRS:
            return f"{IMAGE_WORKDIR}/{rel}"
        if rel is not None:
            raise ConfigError(f"{key} {path!r} is in this checkout but not in the pipeline image, which copies "
                              f"only {', '.join(d + '/' for d in IMAGE_DIRS)} (deploy/docker/pipeline.Dockerfile): "
                              "move it under schemas/<dataset>/ or give a URI on shared storage")
    return shared_location(path, key)


def _table_paths(cfg: PipelineConfig) -> list[tuple[str, str]]:
    data = cfg.data
    if data.spans is not None:  # table paths are file names inside each span directory
        return [("data.spans.base", data.spans.base)]
    tables = (("events", data.events), ("users", data.users), ("items", data.items))
    return [(f"data.{name}.path", t.path) for name, t in tables if t is not None]


def cluster_config(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` for a compiled spec: every shared location checked (``ConfigError`` otherwise),
    the serving base defaulting to ``<pipeline_root>/serving``, and ``source_path`` (used in
    messages) made relative to this checkout."""
    root = shared_location(cfg.pipeline_root, "pipeline_root")
    serving = (shared_location(cfg.serving_base_path, "serving_base_path") if cfg.serving_base_path
               else f"{root.rstrip('/')}/serving")
    for key, path in _table_paths(cfg):
        shared_location(path, key)
    image_file(f"{cfg.schema_dir}/schema.pbtxt", "schema_dir")
    source = cfg.source_path and (_in_checkout(cfg.source_path) or os.path.basename(cfg.source_path))
    return dataclasses.replace(cfg, pipeline_root=root, serving_base_path=serving, source_path=source)
