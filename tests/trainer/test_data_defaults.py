"""The data-derived id embedding size (trainer/data_defaults.py), by hand."""

import pytest

from trainer.data_defaults import id_embedding_dim, resolve
from trainer.hparams import RetrievalHParams, trainer_config
from trainer.typed_config import ConfigError


@pytest.mark.parametrize("events,users,items,dim", [
    (80_000, 943, 1_682, 48),      # MovieLens-100K: 30.5 events per id -> 122 -> capped at 48
    (20_000, 6_040, 3_400, 16),    # the sparse subsample: 2.1 per id -> 8.5 -> 16 (multiple of 8) -> 16
    (45_000, 6_040, 3_400, 24),    # 4.8 per id -> 19.1 -> 24 (next multiple of 8)
    (370_000, 78_000, 186_000, 16),  # the degenerate log: 1.4 per id -> 5.6 -> floor 16
    (0, 0, 0, 16),                 # nothing at all: the floor, no division by zero
])
def test_id_embedding_dim_from_events_per_id(events, users, items, dim):
    assert id_embedding_dim(events, users, items) == dim


def test_a_configured_size_is_kept_and_zero_is_derived():
    assert RetrievalHParams().id_embedding_dim == 0  # the default derives it
    kept = resolve(RetrievalHParams(id_embedding_dim=32), 20_000, 6_040, 3_400)
    assert kept.id_embedding_dim == 32
    derived = resolve(RetrievalHParams(id_embedding_dim=0), 20_000, 6_040, 3_400)
    assert derived.id_embedding_dim == 16 and derived.embedding_dim == RetrievalHParams().embedding_dim
    with pytest.raises(ConfigError, match="id_embedding_dim"):
        trainer_config({"retrieval": {"id_embedding_dim": -1}})


def test_a_warm_started_run_keeps_its_base_models_id_size():
    kept = resolve(RetrievalHParams(id_embedding_dim=0), 20_000, 6_040, 3_400, base_dim=48)
    assert kept.id_embedding_dim == 48  # derived would be 16
    configured = resolve(RetrievalHParams(id_embedding_dim=24), 20_000, 6_040, 3_400, base_dim=48)
    assert configured.id_embedding_dim == 24  # a configured size is used as given
