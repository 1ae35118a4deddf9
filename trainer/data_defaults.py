"""Hyper-parameters derived from the data when the config leaves them at 0.

One rule so far, for the retrieval model's id embeddings (``id_embedding_dim: 0``, the
default): an id table gets about ``DIMS_PER_EVENT`` dimensions per training event per id
(events / (users + items)), rounded up to a multiple of 8, between ``MIN_ID_DIM`` and
``MAX_ID_DIM``. A dense log (MovieLens-100K: 38 events per id; MovieLens-1M: 100) gets
``MAX_ID_DIM``, the size the dense-data tables were measured with; a sparse one (the
MovieLens-1M subsample with <= 5 events per user: 2.6 per id) gets 16, the size its
validation split preferred over 8, 24 and 48 (README "History encoders": validation
Recall@100 0.2255 at 16 vs 0.2106 at 48). A run that warm-starts from a blessed model
keeps that model's size (``base_dim``), so the id tables carry over when the derived size
would change between spans. Epochs are derived in skeleton.epochs_for_steps.
"""

from __future__ import annotations

import dataclasses

from trainer.training_logs import log

DIMS_PER_EVENT = 4
MIN_ID_DIM, MAX_ID_DIM = 16, 48


def id_embedding_dim(events: int, users: int, items: int) -> int:
    per_id = events / max(1, users + items)
    dim = -(-int(DIMS_PER_EVENT * per_id) // 8) * 8
    return int(min(MAX_ID_DIM, max(MIN_ID_DIM, dim)))


def resolve(hp, events: int, users: int, items: int, kind: str = "", base_dim: int | None = None):
    """``hp`` with its data-derived fields filled in (a field set in the config is kept).

    ``base_dim``: the id size of the model this run warm-starts from; it wins over the
    derived size, so the learned id rows carry over (trainer/warm_start.py).
    """
    if getattr(hp, "id_embedding_dim", None) != 0:
        return hp
    dim = id_embedding_dim(events, users, items)
    if base_dim:
        if base_dim != dim:
            log(f"{kind}: id embedding size {base_dim}, the warm-start base model's (the data would derive {dim}; "
                f"a changed size could not carry the id tables over)")
        return dataclasses.replace(hp, id_embedding_dim=int(base_dim))
    log(f"{kind}: id embedding size derived from the data: {dim} ({events:,} train events, {users:,} users, "
        f"{items:,} items = {events / max(1, users + items):.1f} events per id)")
    return dataclasses.replace(hp, id_embedding_dim=dim)
