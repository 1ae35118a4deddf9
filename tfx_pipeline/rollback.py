"""Rollback: take the newest pushed version of a model out of service.

The newest version directory is renamed to ``.rolled_back-<version>`` (kept, not
deleted, so it can be restored by renaming it back). A server polling the base
path, ours or TF Serving with ``latest { num_versions: 2 }``, then serves the
previous version, which the push left in place.
"""

from __future__ import annotations

from pathlib import Path


def versions(model_base: Path) -> list[int]:
    return sorted(int(p.name) for p in Path(model_base).iterdir() if p.is_dir() and p.name.isdigit())


def rollback(model_base: Path) -> str:
    model_base = Path(model_base)
    if not model_base.is_dir():
        raise FileNotFoundError(f"{model_base}: no pushed versions (run the pipeline first)")
    found = versions(model_base)
    if len(found) < 2:
        raise FileNotFoundError(f"{model_base}: only {len(found)} version(s) {found}; nothing to roll back to")
    newest = found[-1]
    (model_base / str(newest)).rename(model_base / f".rolled_back-{newest}")
    return f"rolled back {model_base.name}: version {newest} moved aside, now serving {found[-2]}"
