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


# The side features implicit_with_side_tables adds (column -> kind), one of every kind, and the
# schema entries they need beside schemas/implicit_demo/schema.pbtxt's.
SIDE_USER_FEATURES = {"age": "numeric", "tier": "categorical"}
SIDE_ITEM_FEATURES = {"brand": "categorical", "title": "text", "tags": "multi_valued"}
_SCALAR = "presence { min_fraction: 1.0 min_count: 1 } shape { dim { size: 1 } }"
_LIST = "presence { min_fraction: 1.0 min_count: 1 } value_count { min: 1 }"
_SIDE_SCHEMA = "".join(f'feature {{ name: "{name}" type: {kind} {shape} }}\n' for name, kind, shape in (
    ("user_age", "FLOAT", _SCALAR), ("user_tier", "BYTES", _SCALAR), ("item_brand", "BYTES", _SCALAR),
    ("item_title", "BYTES", _SCALAR), ("item_tags", "BYTES", _LIST)))


def implicit_with_side_tables(tmp_path, num_users: int = 60, num_items: int = 40, events_per_user: int = 20,
                              **over):
    """A generated implicit log (datasets.make_synthetic_implicit, scaled by the arguments) with a
    user table (numeric + categorical) and an item table (categorical, text, multi-valued), written
    under ``tmp_path / "data"``, and the implicit_demo schema extended by those features under
    ``tmp_path / "schema"``; the config's root is ``tmp_path / "run"``. ``over``: top-level overrides."""
    import numpy as np
    import pandas as pd

    from tfx_pipeline.config import load_config, resolve_path
    from tfx_pipeline.data.datasets import make_synthetic_implicit

    data, schema_dir = tmp_path / "data", tmp_path / "schema"
    make_synthetic_implicit(data, num_users=num_users, num_items=num_items, events_per_user=events_per_user)
    rng = np.random.default_rng(3)
    pd.DataFrame({"visitor": [f"u{u:04d}" for u in range(num_users)],
                  "age": rng.integers(18, 70, num_users), "tier": rng.choice(["free", "plus"], num_users),
                  }).to_csv(data / "users.csv", index=False)
    pd.DataFrame({"sku": [f"sku-{i:04d}" for i in range(num_items)],
                  "brand": rng.choice(["acme", "zeta", "nova"], num_items),
                  "title": [f"{rng.choice(['red', 'blue'])} {rng.choice(['shoe', 'hat', 'bag'])}"
                            for _ in range(num_items)],
                  "tags": ["|".join(rng.choice(["sale", "new", "eco", "gift"], size=rng.integers(1, 3),
                                               replace=False)) for _ in range(num_items)],
                  }).to_csv(data / "items.csv", index=False)
    schema_dir.mkdir(parents=True, exist_ok=True)
    base = (resolve_path("schemas/implicit_demo") / "schema.pbtxt").read_text()
    (schema_dir / "schema.pbtxt").write_text(base + _SIDE_SCHEMA)
    cfg = {"schema_dir": str(schema_dir), "pipeline_root": str(tmp_path / "run"),
           "serving_base_path": str(tmp_path / "serving"),
           "data": {"fetch": "none", "events": {"path": str(data / "events.csv")},
                    "users": {"path": str(data / "users.csv"), "id_column": "visitor",
                              "features": SIDE_USER_FEATURES},
                    "items": {"path": str(data / "items.csv"), "id_column": "sku",
                              "features": SIDE_ITEM_FEATURES, "multi_value_separator": "|"}},
           "trainer": {**TINY_TRAINERS, "gate": LENIENT_GATE}}
    cfg.update(over)
    return load_config("configs/implicit_demo.yaml", cfg)
