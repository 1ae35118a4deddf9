"""Examples: strictly-earlier history (no leakage), context features, time splits."""

import numpy as np
import pandas as pd
import tensorflow as tf

from trainer import splits
from tfx_pipeline.data.example_builder import build_examples, encode_rows, column_types, hour_and_weekday, user_examples
from tfx_pipeline.config import parse_config
from trainer import features as F


def _events(rows):
    return [(t, i, item, r, s) for i, (t, item, r, s) in enumerate(rows)]


def test_history_is_strictly_earlier_and_capped():
    ev = _events([(300, "c", 5.0, "train"), (100, "a", 3.0, "train"), (200, "b", 4.0, "train"),
                  (300, "d", 1.0, "eval"), (400, "e", 4.0, "eval")])
    out = {row[F.ITEM_ID][0].decode(): row for _, row in user_examples("u1", ev, 2, 4.0, None, None, {})}
    assert out["a"][F.HISTORY_ITEM_IDS] == []
    assert out["b"][F.HISTORY_ITEM_IDS] == [b"a"]
    # c and d share a timestamp: neither is in the other's history.
    assert out["c"][F.HISTORY_ITEM_IDS] == [b"a", b"b"]
    assert out["d"][F.HISTORY_ITEM_IDS] == [b"a", b"b"]
    assert out["e"][F.HISTORY_ITEM_IDS] == [b"c", b"d"]  # capped at 2, oldest dropped
    assert out["b"][F.HOURS_SINCE_PREV_EVENT] == [100 / 3600.0]
    assert out["a"][F.ENGAGED_LABEL] == [0] and out["b"][F.ENGAGED_LABEL] == [1]


def test_hour_and_weekday_match_pandas():
    for ts in (0, 881250949, 1_600_000_000, 1_700_003_600):
        when = pd.Timestamp(ts, unit="s")
        assert hour_and_weekday(ts) == (when.hour, when.dayofweek)


def test_encode_rows_round_trip():
    types = column_types({"item_genres": F.MULTI_VALUED}, [F.USER_ID, F.TIMESTAMP, F.RATING_LABEL, "item_genres"])
    rows = [{F.USER_ID: [b"u"], F.TIMESTAMP: [5], F.RATING_LABEL: [2.5], "item_genres": [b"x", b"y"]}]
    ex = tf.train.Example.FromString(encode_rows(rows, types)[0])
    f = ex.features.feature
    assert f[F.USER_ID].bytes_list.value == [b"u"] and f[F.TIMESTAMP].int64_list.value == [5]
    assert f["item_genres"].bytes_list.value == [b"x", b"y"]


def test_global_time_split_puts_latest_events_in_eval():
    events = pd.DataFrame({"user_id": list("aabbcc"), "timestamp": [1, 6, 2, 5, 3, 4]})
    s = splits.assign_splits(events, "global_time", eval_fraction=1 / 3)
    assert s.tolist() == ["train", "eval", "train", "eval", "train", "train"]


def test_per_user_split_holds_out_each_users_latest():
    events = pd.DataFrame({"user_id": ["a"] * 5 + ["b"] * 2, "timestamp": [5, 1, 2, 3, 4, 1, 2]})
    s = splits.assign_splits(events, "per_user", eval_fraction=0.2, min_user_events=5)
    assert s.tolist() == ["eval", "train", "train", "train", "train", "train", "train"]


def test_beam_build_writes_all_splits(tmp_path):
    cfg = parse_config({"name": "t", "schema_dir": ".", "examples": {"history_length": 3},
                        "data": {"events": {"path": "x", "columns": {"user": "u", "item": "i", "timestamp": "t"}}}})
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"user_id": [f"u{i % 4}" for i in range(40)], "item_id": [f"i{v}" for v in rng.integers(0, 9, 40)],
                           "timestamp": np.arange(40) * 100, "rating": 1.0})
    counts = build_examples(events, None, None, cfg, str(tmp_path))
    assert counts["train"] + counts["eval"] == 40 and counts["users"] == 4
    n = sum(1 for _ in tf.data.TFRecordDataset([str(p) for p in (tmp_path / "Split-train").iterdir()], "GZIP"))
    assert n == counts["train"]
    assert len(list((tmp_path / "Split-items").iterdir())) == 1
