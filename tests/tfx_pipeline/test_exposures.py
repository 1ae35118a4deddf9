"""Logged exposures (from `recsys feedback build-span`) as ranking negatives in the examples."""

import pandas as pd
import pytest
import tensorflow as tf

from tfx_pipeline.config import parse_config
from tfx_pipeline.data.example_builder import EXPOSURES_SPLIT, build_examples, user_examples
from tfx_pipeline.data.tables import DataError, load_exposures
from trainer import features as F


def test_exposure_rows_have_the_requests_features_and_no_engagement():
    events = [(100, 0, "a", 5.0, "train"), (200, 1, "b", 5.0, "train"), (300, 2, "c", 1.0, "eval")]
    out = list(user_examples("u1", events, 5, 4.0, None, None, {}, exposures=[(200, "x"), (250, "y")]))
    shown = {row[F.ITEM_ID][0]: row for split, row in out if split == EXPOSURES_SPLIT}
    assert set(shown) == {b"x", b"y"}
    assert shown[b"x"][F.HISTORY_ITEM_IDS] == [b"a"]  # strictly before the request
    assert shown[b"y"][F.HISTORY_ITEM_IDS] == [b"a", b"b"]
    assert shown[b"y"][F.ENGAGED_LABEL] == [0] and shown[b"y"][F.RATING_LABEL] == [0.0]
    assert shown[b"y"][F.HOURS_SINCE_PREV_EVENT] == [50 / 3600.0]
    assert sum(1 for split, _ in out if split != EXPOSURES_SPLIT) == 3


def _spans_cfg(base):
    return parse_config({"name": "t", "schema_dir": ".", "examples": {"history_length": 3},
                         "data": {"spans": {"base": str(base)},
                                  "events": {"path": "events.csv",
                                             "columns": {"user": "user", "item": "item", "timestamp": "ts"}}}})


def test_load_exposures_reads_each_span_and_checks_rows(tmp_path):
    (tmp_path / "span-1").mkdir()
    (tmp_path / "span-1" / "events.csv").write_text("user,item,ts\nu1,i1,5\n")
    assert load_exposures(_spans_cfg(tmp_path)) is None
    (tmp_path / "span-2").mkdir()
    (tmp_path / "span-2" / "events.csv").write_text("user,item,ts\nu1,i2,50\n")
    cols = "request_id,user_id,item_id,position,request_timestamp,model_name,model_version,engaged,engaged_timestamp\n"
    (tmp_path / "span-2" / "exposures.csv").write_text(cols + "r-0,u1,i2,1,40,retrieval,7,1,50\nr-0,u1,i3,2,40,retrieval,7,0,\n")
    got = load_exposures(_spans_cfg(tmp_path))
    assert list(got[F.ITEM_ID]) == ["i2", "i3"] and list(got["engaged"]) == [1, 0] and list(got[F.TIMESTAMP]) == [40, 40]
    (tmp_path / "span-2" / "exposures.csv").write_text(cols + "r-0,u1,i2,1,40,retrieval,7,yes,\n")
    with pytest.raises(DataError, match="exposures.csv: column 'engaged'"):
        load_exposures(_spans_cfg(tmp_path))


def test_build_writes_only_usable_not_engaged_exposures(tmp_path, capsys):
    cfg = parse_config({"name": "t", "schema_dir": ".", "examples": {"history_length": 3},
                        "data": {"events": {"path": "x", "columns": {"user": "u", "item": "i", "timestamp": "t"}}}})
    events = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["a", "b", "a", "c"],
                           "timestamp": [10, 20, 30, 40], "rating": 1.0})
    exposures = pd.DataFrame({"user_id": ["u1", "u1", "u2", "ghost"], "item_id": ["c", "b", "b", "a"],
                              "timestamp": [15, 15, 35, 5], "engaged": [0, 1, 0, 0]})
    counts = build_examples(events, None, None, cfg, str(tmp_path), exposures=exposures)
    assert counts[EXPOSURES_SPLIT] == 2  # engaged one is an event already; "ghost" has no events
    assert "1 of 3 not-engaged exposures left out" in capsys.readouterr().out
    files = [str(p) for p in (tmp_path / f"Split-{EXPOSURES_SPLIT}").iterdir()]
    items = sorted(tf.train.Example.FromString(r.numpy()).features.feature[F.ITEM_ID].bytes_list.value[0]
                   for r in tf.data.TFRecordDataset(files, "GZIP"))
    assert items == [b"b", b"c"]
