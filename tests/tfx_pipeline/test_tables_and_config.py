"""Bad input stops with a message naming the file, the column and what is wrong."""

import pytest

from tfx_pipeline.config import ConfigError, load_config, parse_config
from tfx_pipeline.data.tables import DataError, load_tables


def _raw(tmp_path, **events_extra) -> dict:
    return {"name": "t", "schema_dir": str(tmp_path),
            "data": {"events": {"path": str(tmp_path / "events.csv"),
                                "columns": {"user": "u", "item": "i", "timestamp": "t", "rating": "r"}, **events_extra}}}


def _cfg(tmp_path, events_csv: str, items_csv: str | None = None, **events_extra):
    (tmp_path / "events.csv").write_text(events_csv)
    raw = {
        "name": "t",
        "schema_dir": str(tmp_path),
        "data": {"events": {"path": str(tmp_path / "events.csv"),
                            "columns": {"user": "u", "item": "i", "timestamp": "t", "rating": "r"}, **events_extra}},
    }
    if items_csv is not None:
        (tmp_path / "items.csv").write_text(items_csv)
        raw["data"]["items"] = {"path": str(tmp_path / "items.csv"), "id_column": "i",
                                "features": {"genres": "multi_valued"}}
    return parse_config(raw)


def test_shipped_configs_parse():
    ml = load_config("configs/movielens_100k.yaml")
    assert ml.side_features()["item_genres"] == "multi_valued"
    imp = load_config("configs/implicit_demo.yaml")
    assert imp.side_features() == {} and imp.data.events.columns["event_type"] == "action"


def test_unknown_config_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['histroy_length'\]"):
        parse_config({"name": "x", "schema_dir": "s", "examples": {"histroy_length": 3},
                      "data": {"events": {"path": "e", "columns": {"user": "u", "item": "i", "timestamp": "t"}}}})


def test_missing_role_mapping_is_an_error():
    with pytest.raises(ConfigError, match=r"must map \['timestamp'\]"):
        parse_config({"name": "x", "schema_dir": "s",
                      "data": {"events": {"path": "e", "columns": {"user": "u", "item": "i"}}}})


def test_good_table_loads(tmp_path):
    cfg = _cfg(tmp_path, "u,i,t,r\n1,10,100,4\n1,11,200,5\n")
    events, users, items = load_tables(cfg)
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert events["timestamp"].tolist() == [100, 200] and users is None and items is None


def test_missing_column_names_file_and_column(tmp_path):
    cfg = _cfg(tmp_path, "u,i,r\n1,10,4\n")
    with pytest.raises(DataError) as e:
        load_tables(cfg)
    assert "events.csv" in str(e.value) and "missing required column 't'" in str(e.value)


def test_malformed_row_names_line(tmp_path):
    cfg = _cfg(tmp_path, "u,i,t,r\n1,10,100,4\n1,11,200,5,extra,fields\n")
    with pytest.raises(DataError, match=r"events.csv: malformed row"):
        load_tables(cfg)


def test_non_numeric_timestamp_names_row_and_column(tmp_path):
    cfg = _cfg(tmp_path, "u,i,t,r\n1,10,100,4\n1,11,yesterday,5\n")
    with pytest.raises(DataError) as e:
        load_tables(cfg)
    msg = str(e.value)
    assert "column 't'" in msg and "line 3" in msg and "yesterday" in msg


def test_empty_user_id_is_reported(tmp_path):
    cfg = _cfg(tmp_path, "u,i,t,r\n,10,100,4\n")
    with pytest.raises(DataError, match=r"column 'u' is empty in 1 row\(s\) \(line 2\)"):
        load_tables(cfg)


@pytest.mark.parametrize("content,expected", [("", "is empty"), ("u,i,t,r\n", "no rows")])
def test_empty_input(tmp_path, content, expected):
    cfg = _cfg(tmp_path, content)
    with pytest.raises(DataError, match=expected):
        load_tables(cfg)


def test_missing_file(tmp_path):
    cfg = _cfg(tmp_path, "u,i,t,r\n1,1,1,1\n")
    (tmp_path / "events.csv").unlink()
    with pytest.raises(DataError, match="file not found"):
        load_tables(cfg)


def test_event_item_missing_from_item_table(tmp_path):
    cfg = _cfg(tmp_path, "u,i,t,r\n1,10,100,4\n1,99,200,5\n", items_csv="i,genres\n10,Drama|Comedy\n")
    with pytest.raises(DataError, match=r"items table has no row for item_id \['99'\]"):
        load_tables(cfg)


def test_unknown_event_type_without_weight(tmp_path):
    (tmp_path / "events.csv").write_text("u,i,t,a\n1,10,100,click\n1,11,200,refund\n")
    cfg = parse_config({"name": "t", "schema_dir": ".", "data": {"events": {
        "path": str(tmp_path / "events.csv"), "columns": {"user": "u", "item": "i", "timestamp": "t", "event_type": "a"},
        "event_weights": {"click": 1.0}}}})
    with pytest.raises(DataError, match=r"event type\(s\) \['refund'\] not in data.events.event_weights"):
        load_tables(cfg)


# -- nothing read silently wrong (ids, times, encodings, line numbers) ----------------------

def test_ids_with_surrounding_whitespace_are_an_error_unless_kept(tmp_path):
    # "u1" and "u1 " would be two users: by default the run stops and names the row and the option.
    text = "u,i,t,r\nu1,10,100,4\nu1 ,10,200,5\n"
    with pytest.raises(DataError) as e:
        load_tables(_cfg(tmp_path, text))
    msg = str(e.value)
    assert "column 'u' has ids with leading or trailing whitespace in 1 row(s) (line 3)" in msg
    assert "'u1 '" in msg and "data.id_whitespace: keep" in msg
    # The explicit option reads them exactly as written: neither is trimmed into the other.
    kept = parse_config({**_raw(tmp_path), "data": {**_raw(tmp_path)["data"], "id_whitespace": "keep"}})
    events, _, _ = load_tables(kept)
    assert events["user_id"].tolist() == ["u1", "u1 "]
    with pytest.raises(ConfigError, match=r"data.id_whitespace must be one of error, keep"):
        parse_config({**_raw(tmp_path), "data": {**_raw(tmp_path)["data"], "id_whitespace": "strip"}})
    with pytest.raises(DataError, match=r"column 'u' is empty in 1 row\(s\) \(line 2\)"):
        load_tables(_cfg(tmp_path, "u,i,t,r\n   ,10,100,4\n"))


def test_item_table_ids_follow_the_same_whitespace_rule(tmp_path):
    cfg = _cfg(tmp_path, "u,i,t,r\n1,10,100,4\n", items_csv="i,genres\n10,a\n 11,b\n")
    with pytest.raises(DataError, match=r"items.csv: column 'i' has ids with leading or trailing whitespace"):
        load_tables(cfg)


def _parquet_cfg(tmp_path, frame, **events_extra):
    frame.to_parquet(tmp_path / "events.parquet")
    return parse_config({"name": "t", "schema_dir": str(tmp_path), "data": {"events": {
        "path": str(tmp_path / "events.parquet"),
        "columns": {"user": "u", "item": "i", "timestamp": "t"}, **events_extra}}})


def test_parquet_integer_ids_read_as_their_digits_and_float_ids_are_refused(tmp_path):
    import pandas as pd

    events, _, _ = load_tables(_parquet_cfg(tmp_path, pd.DataFrame({"u": [1, 2], "i": [10, 11], "t": [100, 200]})))
    assert events["user_id"].tolist() == ["1", "2"] and events["item_id"].tolist() == ["10", "11"]
    with pytest.raises(DataError, match=r"column 'i' holds float64 values; ids must be strings or integers"):
        load_tables(_parquet_cfg(tmp_path, pd.DataFrame({"u": ["a", "b"], "i": [1.0, 2.0], "t": [100, 200]})))


def test_parquet_timestamp_column_is_read_in_its_own_unit(tmp_path):
    import pandas as pd

    times = pd.to_datetime(["1998-04-01T00:00:00", "1998-04-01T00:00:01.5"])  # timestamp[ns] in Parquet
    events, _, _ = load_tables(_parquet_cfg(tmp_path, pd.DataFrame({"u": ["a", "a"], "i": ["x", "y"], "t": times})))
    assert events["timestamp"].tolist() == [891388800, 891388801]
    utc = pd.to_datetime(["1998-04-01T02:00:00+02:00"], utc=False)
    events, _, _ = load_tables(_parquet_cfg(tmp_path, pd.DataFrame({"u": ["a"], "i": ["x"], "t": utc})))
    assert events["timestamp"].tolist() == [891388800]


@pytest.mark.parametrize("value,hint", [("32503680000", "more than 86400 s in the future"),  # the year 3000
                                        ("891388800000", "look like milliseconds")])
def test_future_times_are_refused(tmp_path, value, hint):
    with pytest.raises(DataError, match=hint) as e:
        load_tables(_cfg(tmp_path, f"u,i,t,r\n1,10,100,4\n1,11,{value},5\n"))
    assert "line 3" in str(e.value) and "data.events.max_future_seconds" in str(e.value)


def test_the_future_horizon_is_configurable(tmp_path):
    import time

    ahead = int(time.time()) + 3 * 86_400  # three days ahead: refused by default, read with a wider horizon
    text = f"u,i,t,r\n1,10,100,4\n1,11,{ahead},5\n"
    with pytest.raises(DataError, match=r"more than 86400 s in the future"):
        load_tables(_cfg(tmp_path, text))
    events, _, _ = load_tables(_cfg(tmp_path, text, max_future_seconds=7 * 86_400))
    assert events["timestamp"].tolist() == [100, ahead]
    with pytest.raises(ConfigError, match=r"max_future_seconds must be >= 0"):
        _cfg(tmp_path, text, max_future_seconds=-1)


def test_non_utf8_file_names_line_and_fix(tmp_path):
    cfg = _cfg(tmp_path, "unused")
    (tmp_path / "events.csv").write_bytes("u,i,t,r\n1,10,100,4\n1,Amélie,200,5\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_tables(cfg)
    msg = str(e.value)
    assert "events.csv" in msg and "line 3" in msg and "not UTF-8" in msg and "iconv" in msg


def test_line_numbers_count_quoted_multi_line_fields(tmp_path):
    cfg = _cfg(tmp_path, 'u,i,t,r\n1,"a\nb\nc",100,4\n1,11,yesterday,5\n')
    with pytest.raises(DataError, match=r"line 5"):
        load_tables(cfg)
