"""Dated spans: TFX span patterns, the window a run reads, the new span's own split, cutting a log."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfx_pipeline.data import spans
from tfx_pipeline.config import ConfigError, load_config, parse_config
from tfx_pipeline.data.tables import SPAN_COLUMN, DataError, input_files, load_tables


def _touch(base, rel, text="user,item,ts\nu1,i1,5\n"):
    path = base / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _cfg(base, **spans_over):
    return parse_config({
        "name": "t", "schema_dir": ".",
        "data": {"spans": {"base": str(base), **spans_over},
                 "events": {"path": "events.csv", "columns": {"user": "user", "item": "item", "timestamp": "ts"}}}})


def test_span_numbers_dates_and_versions(tmp_path):
    for rel in ("span-1/events.csv", "span-3/events.csv", "span-12/events.csv", "span-2/other.csv"):
        _touch(tmp_path, rel)
    assert spans.available_spans(tmp_path, "span-{SPAN}/events.csv") == [1, 3, 12]
    _touch(tmp_path / "dated", "2024-01-02/events.csv")
    _touch(tmp_path / "dated", "2024-01-05/events.csv")
    days = spans.available_spans(tmp_path / "dated", "{YYYY}-{MM}-{DD}/events.csv")
    assert days == [19724, 19727]  # days since the epoch, as TFX numbers date spans
    _touch(tmp_path / "v", "span-4/v1/events.csv")
    _touch(tmp_path / "v", "span-4/v2/events.csv")
    got = spans.resolve_span(tmp_path / "v", "span-{SPAN}/v{VERSION}", "events.csv", 4)
    assert got.version == 2 and got.directory == tmp_path / "v" / "span-4" / "v2"  # TFX: latest version


def test_select_latest_pinned_and_window(tmp_path):
    for s in (1, 2, 3):
        _touch(tmp_path, f"span-{s}/events.csv", f"user,item,ts\nu{s},i{s},{s * 100}\n")
    assert [s.span for s in spans.select_spans(_cfg(tmp_path).data.spans, "events.csv")] == [1, 2, 3]
    assert [s.span for s in spans.select_spans(_cfg(tmp_path, window=2).data.spans, "events.csv")] == [2, 3]
    assert [s.span for s in spans.select_spans(_cfg(tmp_path, span=2).data.spans, "events.csv")] == [1, 2]
    events, _, _ = load_tables(_cfg(tmp_path, window=2))
    assert list(events[SPAN_COLUMN]) == [2, 3] and list(events["user_id"]) == ["u2", "u3"]
    assert input_files(_cfg(tmp_path, span=1)) == [tmp_path / "span-1" / "events.csv"]
    with pytest.raises(spans.SpanError, match=r"data.spans.span is 7 but the spans .* are \[1, 2, 3\]"):
        spans.select_spans(_cfg(tmp_path, span=7).data.spans, "events.csv")


def test_no_span_is_a_clear_error(tmp_path):
    with pytest.raises(spans.SpanError, match="no span directory matches 'span-{SPAN}'.*make-spans"):
        load_tables(_cfg(tmp_path))


def test_bad_rows_name_the_span_file(tmp_path):
    _touch(tmp_path, "span-1/events.csv")
    bad = _touch(tmp_path, "span-2/events.csv", "user,item,ts\nu1,i1,notatime\n")
    with pytest.raises(DataError, match=str(bad)):
        load_tables(_cfg(tmp_path))


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="needs a {SPAN}"):
        _cfg(tmp_path, pattern="daily")
    with pytest.raises(ConfigError, match="file names inside each span"):
        parse_config({"name": "t", "schema_dir": ".", "data": {
            "spans": {"base": str(tmp_path)},
            "events": {"path": "data/x/events.csv", "columns": {"user": "u", "item": "i", "timestamp": "t"}}}})


def test_latest_span_split_holds_the_new_span_only(tmp_path):
    from tfx_pipeline.data.example_builder import LATEST_SPAN_SPLIT, build_examples

    cfg = parse_config({"name": "t", "schema_dir": ".", "examples": {"history_length": 3},
                        "data": {"events": {"path": "x", "columns": {"user": "u", "item": "i", "timestamp": "t"}}}})
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"user_id": [f"u{i % 4}" for i in range(40)], "item_id": [f"i{v}" for v in rng.integers(0, 9, 40)],
                           "timestamp": np.arange(40) * 100, "rating": 1.0, SPAN_COLUMN: [1] * 30 + [2] * 10})
    counts = build_examples(events, None, None, cfg, str(tmp_path))
    assert counts[LATEST_SPAN_SPLIT] == 10 and counts["train"] + counts["eval"] == 40
    files = [str(p) for p in (tmp_path / f"Split-{LATEST_SPAN_SPLIT}").iterdir()]
    stamps = sorted(tf.train.Example.FromString(r.numpy()).features.feature["timestamp"].int64_list.value[0]
                    for r in tf.data.TFRecordDataset(files, "GZIP"))
    assert stamps == list(range(3000, 4000, 100))


def test_make_spans_cuts_by_time_with_growing_catalogue(tmp_path):
    from tfx_pipeline.data.span_tools import make_spans

    (tmp_path / "src").mkdir()
    pd.DataFrame({"u": ["a", "b", "a", "c", "d", "c"], "i": ["x", "y", "y", "z", "w", "x"],
                  "t": [5, 1, 3, 9, 12, 7]}).to_csv(tmp_path / "src" / "events.csv", index=False)
    pd.DataFrame({"i": ["x", "y", "z", "w"], "g": ["1", "2", "3", "4"]}).to_csv(tmp_path / "src" / "items.csv", index=False)
    cfg = parse_config({"name": "t", "schema_dir": ".", "data": {
        "events": {"path": str(tmp_path / "src" / "events.csv"), "columns": {"user": "u", "item": "i", "timestamp": "t"}},
        "items": {"path": str(tmp_path / "src" / "items.csv"), "id_column": "i", "features": {"g": "categorical"}}}})
    rows = make_spans(cfg, tmp_path / "spans", 2)
    assert [r["events"] for r in rows] == [3, 3] and rows[1]["new_users"] == 2 and rows[1]["new_items"] == 2
    first = pd.read_csv(tmp_path / "spans" / "span-1" / "events.csv")
    assert sorted(first["t"]) == [1, 3, 5]  # the earliest half, columns unchanged
    assert sorted(pd.read_csv(tmp_path / "spans" / "span-1" / "items.csv")["i"]) == ["x", "y"]
    assert sorted(pd.read_csv(tmp_path / "spans" / "span-2" / "items.csv")["i"]) == ["w", "x", "y", "z"]
    with pytest.raises(DataError, match="--force"):
        make_spans(cfg, tmp_path / "spans", 2)


def test_kubeflow_compile_of_a_spans_config_resolves_spans_at_run_time(tmp_path):
    """No span exists where the spec is compiled; a recurring run must not be answered from the cache."""
    import json

    from tfx_pipeline.kubeflow_runner import compile_pipeline

    cfg = load_config("configs/movielens_100k_daily.yaml", {"data": {"spans": {"base": str(tmp_path / "none")}},
                                                            "pipeline_root": str(tmp_path / "root")})
    out = compile_pipeline(cfg, tmp_path / "pipeline.json", image="example/recsys:test")
    text = out.read_text()
    assert "at-run-time" in text
    tasks = json.loads(text)["pipelineSpec"]["root"]["dag"]["tasks"]
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
