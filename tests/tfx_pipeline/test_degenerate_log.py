"""The degenerate-log generator (bench/degenerate_log.py) and the example builder's split checks:
an empty eval or train split is refused with what to change; a constant timestamp is accepted
and said to be one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from bench import degenerate_log
from tests.support.tiny_pipeline import config
from trainer import features as F, splits


def test_generator_is_deterministic_and_has_the_asked_shape(tmp_path):
    a = degenerate_log.generate(780, 1860, 4600, constant_timestamp=True, seed=3)
    b = degenerate_log.generate(780, 1860, 4600, constant_timestamp=True, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert len(a) == 4600 and a["user_id"].nunique() == 780 and a["timestamp"].nunique() == 1
    per_user = a.groupby("user_id").size()
    assert per_user.min() >= 1 and 4 <= per_user.mean() <= 7
    per_item = a.groupby("item_id").size()
    assert per_item.max() > 5 * per_item.median()  # Zipf-like: a head and a long tail
    timed = degenerate_log.generate(50, 100, 200, constant_timestamp=False, seed=3, rating=False)
    assert timed["timestamp"].is_monotonic_increasing and "rating" not in timed


def test_generator_cli_writes_events_and_a_config_that_loads(tmp_path, capsys):
    from tfx_pipeline.config import load_config
    from tfx_pipeline.data.tables import load_tables

    out = tmp_path / "deg"
    assert degenerate_log.main(["--out", str(out), "--users", "50", "--items", "300", "--events", "250",
                                "--constant-timestamp", "--item-table"]) == 0
    assert "250 events, 50 users" in capsys.readouterr().out
    cfg = load_config(out / "config.yaml")
    events, users, items = load_tables(cfg)
    assert len(events) == 250 and users is None and len(items) == 300
    assert cfg.examples.split.strategy == "global_time"


def _events(per_user: list[int], constant: bool = True) -> pd.DataFrame:
    users = np.repeat([f"u{i}" for i in range(len(per_user))], per_user)
    ts = np.full(len(users), 1_600_000_000) if constant else 1_600_000_000 + np.arange(len(users))
    return pd.DataFrame({F.USER_ID: users, F.ITEM_ID: "i0", F.TIMESTAMP: ts, F.RATING_LABEL: 1.0})


def _check(events: pd.DataFrame, strategy: str, min_user_events: int = 5):
    from tfx_pipeline.data.example_builder import check_split

    split_cfg = splits.SplitConfig(strategy=strategy, eval_fraction=0.2, min_user_events=min_user_events)
    labels = splits.assign_splits(events, strategy, 0.2, min_user_events)
    check_split(events, labels, split_cfg)


def test_a_split_without_eval_rows_is_refused_with_what_to_change():
    from tfx_pipeline.data.tables import DataError

    with pytest.raises(DataError, match=r"no eval rows.*min_user_events \(5\).*most any user has is 3"):
        _check(_events([1, 2, 3]), "per_user")
    with pytest.raises(DataError, match="no eval rows"):
        _check(_events([3, 3]), "leave_last_one", min_user_events=4)


def test_a_split_without_train_rows_is_refused():
    from tfx_pipeline.data.tables import DataError

    with pytest.raises(DataError, match="no train rows"):
        _check(_events([1]), "global_time")


def test_a_constant_timestamp_is_accepted_and_said(capsys):
    _check(_events([4, 5, 6]), "global_time")
    out = capsys.readouterr().out
    assert "same timestamp" in out and "histories are empty" in out and "row in the file" in out
    _check(_events([4, 5, 6], constant=False), "global_time")
    assert "same timestamp" not in capsys.readouterr().out


def test_build_examples_refuses_before_beam_runs(tmp_path):
    from tfx_pipeline.data.example_builder import build_examples
    from tfx_pipeline.data.tables import DataError

    cfg = config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, users=None, items=None))
    with pytest.raises(DataError, match="no train rows"):
        build_examples(_events([1]), None, None, cfg, str(tmp_path / "ex"))
    assert not (tmp_path / "ex").exists()


def test_training_data_error_is_a_user_facing_error():
    from tfx_pipeline.errors import user_error_message
    from trainer.skeleton import TrainingDataError

    try:
        raise RuntimeError("executor failed") from TrainingDataError("the eval split has no rows")
    except RuntimeError as e:
        assert user_error_message(e) == "TrainingDataError: the eval split has no rows"
