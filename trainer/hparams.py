"""Typed hyper-parameters for the trainers, the gate and the index; unknown keys are errors.

Parsed from the ``trainer:`` section of a dataset config::

    trainer:
      retrieval: {epochs: 8, history_encoder: gru}
      ranking: {epochs: 4}
      gate: {min_recall_at_100: 0.1}
      index: {recall_floor: 0.95}
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class RetrievalHParams:
    embedding_dim: int = 64  # tower output size; 64 is TFRS's usual default
    id_embedding_dim: int = 48  # user/item id embeddings
    feature_embedding_dim: int = 16  # small vocabularies (genres, occupation, buckets)
    hidden_units: tuple[int, ...] = (128,)
    history_encoder: str = "mean"  # mean | gru | attention (measured in bench/ablation.py)
    attention_heads: int = 2
    use_user_id: bool = True
    use_item_id: bool = True
    use_content_features: bool = True  # item title/genres/year and user side features
    use_context: bool = True  # hour, weekday, recency
    use_history: bool = True
    logq_correction: bool = True  # subtract log(sampling probability) from in-batch logits
    remove_accidental_hits: bool = True
    num_hard_negatives: int = 0  # >0: keep only the top-n scoring in-batch negatives per row
    temperature: float = 0.05  # logits are cosine similarities / temperature
    batch_size: int = 512
    learning_rate: float = 0.003
    epochs: int = 8
    early_stopping_patience: int = 2
    dropout: float = 0.1
    mixed_precision: bool = False  # only applied on GPU
    seed: int = 42
    max_k: int = 100  # largest k the exported recommend signature serves
    exclusion_pad: int = 100  # extra candidates fetched from ScaNN to drop history items


@dataclasses.dataclass(frozen=True)
class RankingHParams:
    embedding_dim: int = 32
    num_cross_layers: int = 2
    deep_units: tuple[int, ...] = (256, 128)
    rating_loss_weight: float = 1.0
    engagement_loss_weight: float = 1.0
    batch_size: int = 1024
    learning_rate: float = 0.002
    epochs: int = 4
    early_stopping_patience: int = 1
    dropout: float = 0.1
    mixed_precision: bool = False
    seed: int = 42


@dataclasses.dataclass(frozen=True)
class GateConfig:
    # Absolute floors a model must reach to be blessed.
    min_recall_at_100: float = 0.0
    min_auc: float = 0.5
    max_rmse: float = 10.0
    # Must beat the popularity baseline on Recall@100 by this factor (1.0 = at least equal).
    min_lift_over_popularity: float = 1.0
    # Change thresholds against the latest blessed model: a drop larger than this fails.
    max_recall_drop: float = 0.01
    max_auc_drop: float = 0.01
    max_rmse_increase: float = 0.02


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    recall_floor: float = 0.95  # ScaNN recall@10 against exact search, or the run fails
    num_eval_queries: int = 500
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    retrieval: RetrievalHParams = RetrievalHParams()
    ranking: RankingHParams = RankingHParams()
    gate: GateConfig = GateConfig()
    index: IndexConfig = IndexConfig()


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        default = getattr(cls(), name) if name in fields else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{name}: expected true/false, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, float):
            kwargs[name] = float(value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}.{name}: expected an integer, got {value!r}")
            kwargs[name] = value
        else:
            kwargs[name] = value
    return cls(**kwargs)


def parse_trainer_config(raw: dict | str | None) -> TrainerConfig:
    if isinstance(raw, str):
        raw = json.loads(raw)
    cfg = _build(TrainerConfig, raw or {}, "trainer")
    if cfg.retrieval.history_encoder not in ("mean", "gru", "attention"):
        raise ValueError("trainer.retrieval.history_encoder must be mean, gru or attention")
    return cfg


def to_json(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)
