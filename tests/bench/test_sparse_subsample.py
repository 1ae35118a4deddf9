"""bench.sparse_subsample: at most N train events per user under the sparse config's split."""

import numpy as np
import pandas as pd
import pytest

from bench import sparse_subsample as SS
from tests.support.movielens_tables import movielens_1m_config
from tfx_pipeline.config import load_config
from tfx_pipeline.data.tables import load_tables
from trainer import splits as S

LEAVE_LAST = S.SplitConfig(strategy="leave_last_one", min_user_events=5)


def _events(seed=1, users=40):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        n = int(rng.integers(1, 30))  # some users below min_user_events, some far above
        ts = rng.integers(1_000_000_000, 1_000_100_000, n)
        ts[: n // 3] = ts[0]  # ties in time, broken by row order as in trainer/splits.py
        rows += [(f"1m_{u}", f"Title, {int(i)} (1999)", int(t), float(rng.integers(1, 6)))
                 for i, t in zip(rng.integers(0, 50, n), ts)]
    rows = [rows[i] for i in rng.permutation(len(rows))]  # not in time order
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])


@pytest.mark.parametrize("split", [LEAVE_LAST, S.SplitConfig("per_user", 0.2, 5), S.SplitConfig("per_user", 0.5, 3)])
@pytest.mark.parametrize("max_train", [1, 5])
def test_no_user_has_more_than_n_train_events(split, max_train):
    ev = _events()
    kept = ev[SS.select_sparse(ev, max_train, split, seed=3)]
    labels = SS.check_sparse(kept, max_train, split)  # raises if the bound fails
    train = kept["user_id"][labels == S.TRAIN].value_counts()
    assert train.max() <= max_train
    assert set(kept["user_id"]) == set(ev["user_id"])  # every user stays


def test_eval_events_are_the_users_last_events_and_kept():
    ev = _events()
    kept = ev[SS.select_sparse(ev, 5, LEAVE_LAST, seed=0)]
    full_eval = ev[S.assign_splits(ev, "leave_last_one", 0.0, 5) == S.EVAL]
    sub_eval = kept[S.assign_splits(kept, "leave_last_one", 0.0, 5) == S.EVAL]
    # The event the full log's leave-last-one split holds out is the subsample's eval event.
    assert sorted(map(tuple, full_eval.values)) == sorted(map(tuple, sub_eval.values))
    per_user = kept["user_id"].value_counts()
    counts = ev["user_id"].value_counts()
    assert (per_user <= 6).all() and (per_user[counts[counts >= 6].index] == 6).all()
    few = counts[counts < 5].index  # no eval event under the split: at most 5 kept, all train
    assert (per_user[few] == np.minimum(counts[few], 5)).all()


def test_deterministic_with_a_seed():
    ev = _events()
    a = SS.select_sparse(ev, 5, LEAVE_LAST, seed=7)
    assert (a == SS.select_sparse(ev, 5, LEAVE_LAST, seed=7)).all()
    assert (a != SS.select_sparse(ev, 5, LEAVE_LAST, seed=8)).any()


def test_global_time_is_refused():
    with pytest.raises(ValueError, match="bounds no user's train events"):
        SS.select_sparse(_events(), 5, S.SplitConfig("global_time", 0.2), seed=0)


def test_writes_the_same_tables_and_the_sparse_config_reads_them(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    ev = _events()
    ev.to_csv(src / "events.csv", index=False)
    pd.DataFrame({"user_id": sorted(set(ev["user_id"])), "age": 25.0, "gender": "F", "occupation": "10",
                  "zip_prefix": "024"}).to_csv(src / "users.csv", index=False)
    items = sorted(set(ev["item_id"])) + ["Never Rated (2000)"]
    pd.DataFrame({"item_id": items, "title": items, "release_year": 1999.0, "genres": "Drama|Comedy"}).to_csv(
        src / "items.csv", index=False)
    out = tmp_path / "sparse"
    s = SS.write_sparse(movielens_1m_config(src), out, 5, LEAVE_LAST, seed=0)
    events, users, items_t = load_tables(movielens_1m_config(out, {"strategy": "leave_last_one"}))
    assert s["events"] == len(events) and s["users"] == len(users) == ev["user_id"].nunique()
    assert s["train_events"] + s["eval_events"] == len(events) and s["events_per_user"]["max"] <= 6
    assert "Never Rated (2000)" not in items_t.index and set(items_t.index) == set(events["item_id"])
    assert set(map(tuple, events.values)) <= set(map(tuple, ev.values))  # rows verbatim


def test_sparse_config_matches_the_generator():
    cfg = load_config(SS.DEFAULT_SPARSE_CONFIG)
    assert cfg.examples.split == LEAVE_LAST and cfg.data.fetch == "none"
    assert cfg.data.events.path == "data/movielens_1m_sparse/events.csv"
    assert cfg.schema_dir == load_config("configs/movielens_1m.yaml").schema_dir
