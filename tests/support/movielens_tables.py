"""A config that reads MovieLens-1M-shaped tables (events/users/items.csv) from a directory."""

from __future__ import annotations

from pathlib import Path

from tfx_pipeline.config import PipelineConfig, load_config, parse_config


def movielens_1m_config(directory: Path, split: dict | None = None) -> PipelineConfig:
    """configs/movielens_1m.yaml's column mappings and features, tables under ``directory``."""
    real = load_config("configs/movielens_1m.yaml")
    d = Path(directory)

    def side(spec, name):
        return {"path": str(d / name), "id_column": spec.id_column, "features": dict(spec.features),
                "multi_value_separator": spec.multi_value_separator}

    return parse_config({
        "name": "t", "schema_dir": str(d),
        "data": {"events": {"path": str(d / "events.csv"), "columns": dict(real.data.events.columns)},
                 "users": side(real.data.users, "users.csv"), "items": side(real.data.items, "items.csv")},
        "examples": {"split": split or {}}})
