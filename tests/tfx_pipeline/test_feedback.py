"""recsys feedback build-span: request logs + new events -> span-<N>/{events,exposures}.csv."""

import csv

import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import prediction_log_pb2

from serving import names
from tfx_pipeline.cli import main
from tfx_pipeline.config import parse_config
from tfx_pipeline.data.feedback import EXPOSURE_COLUMNS, FeedbackError, build_span, format_summary
from tfx_pipeline.data.tables import SPAN_COLUMN, DataError, load_tables

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
T1 = T0 + 7200
HOUR = 3600

# The dataset's own event table: implicit_demo's column names, ISO-8601 times.
COLUMNS = {"user": "visitor", "item": "sku", "timestamp": "event_time", "event_type": "action"}


def iso(ts: int) -> str:
    return np.datetime_as_string(np.datetime64(ts, "s")) + "Z"


EVENTS = [  # (visitor, sku, time, action)
    ("u1", "a", T0 - 10, "click"),          # before the request: not engagement
    ("u1", "b", T0 + HOUR, "click"),        # within 24 h
    ("u1", "b", T0 + 2 * HOUR, "purchase"),  # later event on the same item: the first one counts
    ("u1", "c", T0 + 25 * HOUR, "click"),   # after the window
    ("u2", "x", T1 + 24 * HOUR, "purchase"),  # exactly at the window's end: inside
    ("u3", "r", T1, "click"),               # at the request second: inside
    ("u9", "z", T0, "click"),               # a user with no logged request
]


def config(tmp_path, spans=False):
    events = {"path": "events.csv" if spans else str(tmp_path / "base" / "events.csv"), "columns": COLUMNS,
              "timestamp_format": "iso8601", "event_weights": {"click": 1.0, "purchase": 3.0}}
    data = {"events": events, **({"spans": {"base": str(tmp_path / "daily")}} if spans else {})}
    return parse_config({"name": "fb", "schema_dir": "schemas/implicit_demo", "data": data})


def write_events(path, rows=EVENTS):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["visitor", "sku", "event_time", "action"])
        w.writerows((u, i, iso(t), a) for u, i, t, a in rows)
    return path


def recommend_log(users, items, when, model=names.RECOMMENDER_MODEL, signature=names.RECOMMEND_SIGNATURE,
                  version=7, k=None) -> prediction_log_pb2.PredictionLog:
    """A logged Predict call shaped like the real recommend signature (serving/names.py)."""
    b = len(users)
    items = np.array(items, dtype=object)
    k = [int(np.sum(row != "")) for row in items] if k is None else k
    log = prediction_log_pb2.PredictionLog()
    log.log_metadata.model_spec.name = model
    log.log_metadata.model_spec.signature_name = signature
    log.log_metadata.model_spec.version.value = version
    log.log_metadata.timestamp_secs = when
    req, resp = log.predict_log.request, log.predict_log.response
    req.model_spec.name, req.model_spec.signature_name = model, signature
    inputs = {
        names.USER_ID: np.array(users, dtype=object),
        names.HISTORY_ITEM_IDS: np.array([[""]] * b, dtype=object),
        names.HOUR_OF_DAY: np.full(b, -1, np.int64),
        names.DAY_OF_WEEK: np.full(b, -1, np.int64),
        names.HOURS_SINCE_PREV_EVENT: np.full(b, -1, np.float32),
        names.K: np.array(k, np.int32),
        names.EXCLUDE_HISTORY: np.ones(b, bool),
    }
    for key, value in inputs.items():
        req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    resp.model_spec.name, resp.model_spec.signature_name = model, signature
    resp.model_spec.version.value = version
    scores = np.where(items != "", -np.arange(items.shape[1], dtype=np.float32), -np.inf).astype(np.float32)
    outputs = {names.OUT_ITEM_IDS: items, names.OUT_SCORES: scores, names.OUT_KNOWN_USER: np.ones(b, bool)}
    for key, value in outputs.items():
        resp.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return log


def other_log(model, signature, when=T0):
    log = prediction_log_pb2.PredictionLog()
    log.log_metadata.model_spec.name = model
    log.log_metadata.model_spec.signature_name = signature
    log.log_metadata.timestamp_secs = when
    log.predict_log.request.inputs[names.USER_ID].CopyFrom(tf.make_tensor_proto(np.array(["u1"], dtype=object)))
    return log


def write_logs(path, logs):
    with tf.io.TFRecordWriter(str(path)) as w:
        for log in logs:
            w.write(log.SerializeToString())
    return path


def standard_logs(tmp_path):
    logdir = tmp_path / "request_logs"
    logdir.mkdir(exist_ok=True)
    write_logs(logdir / f"requests-{T0}-0.tfrecord", [
        recommend_log(["u1"], [["a", "b", "c"]], T0),
        other_log(names.RANKING_MODEL, names.SCORE_SIGNATURE),
    ])
    write_logs(logdir / f"requests-{T1}-1.tfrecord", [
        # batched: two users, k = 2 and 3, padded with "".
        recommend_log(["u2", "u3"], [["x", "y", ""], ["p", "q", "r"]], T1, version=8),
        recommend_log(["u1"], [["a"]], T1, model=names.RETRIEVAL_BRUTE_FORCE_MODEL),
    ])
    return str(logdir / "*.tfrecord")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def built(tmp_path):
    cfg = config(tmp_path)
    events = write_events(tmp_path / "new_events.csv")
    summary = build_span(cfg, standard_logs(tmp_path), events, tmp_path / "spans", 3)
    return cfg, events, summary, tmp_path / "spans" / "span-3"


def test_exposures_table(built):
    _, _, summary, span = built
    rows = read_csv(span / "exposures.csv")
    assert list(rows[0]) == list(EXPOSURE_COLUMNS)
    got = [(r["user_id"], r["item_id"], r["position"], r["request_timestamp"], r["model_name"], r["model_version"],
            r["engaged"], r["engaged_timestamp"]) for r in rows]
    assert got == [
        ("u1", "a", "1", str(T0), "recommender", "7", "0", ""),
        ("u1", "b", "2", str(T0), "recommender", "7", "1", str(T0 + HOUR)),
        ("u1", "c", "3", str(T0), "recommender", "7", "0", ""),
        ("u2", "x", "1", str(T1), "recommender", "8", "1", str(T1 + 24 * HOUR)),
        ("u2", "y", "2", str(T1), "recommender", "8", "0", ""),
        ("u3", "p", "1", str(T1), "recommender", "8", "0", ""),
        ("u3", "q", "2", str(T1), "recommender", "8", "0", ""),
        ("u3", "r", "3", str(T1), "recommender", "8", "1", str(T1)),
    ]
    # One request id per request row: shared within a row, distinct across a batch's rows.
    ids = [r["request_id"] for r in rows]
    assert len(set(ids[:3])) == 1 and len(set(ids[3:5])) == 1 and len(set(ids[5:])) == 1
    assert len({ids[0], ids[3], ids[5]}) == 3
    assert summary["records_read"] == 4 and summary["requests"] == 3
    assert summary["exposures"] == 8 and summary["engaged_exposures"] == 3
    assert summary["engaged_rate"] == pytest.approx(3 / 8)
    assert summary["events_written"] == len(EVENTS)
    assert summary["skipped"] == {"other model/signature": 2}
    assert summary["other_models"] == {"ranking/score": 1, "retrieval_brute_force/recommend": 1}
    text = format_summary(summary)
    assert "exposures: 8, engaged within 24 h: 3 (37.50%)" in text and "ranking/score: 1" in text


def test_events_pass_through_unchanged(built):
    _, events, _, span = built
    assert (span / "events.csv").read_bytes() == events.read_bytes()
    assert sorted(p.name for p in span.parent.iterdir()) == ["span-3"]  # no temp dirs left


def test_the_pipeline_reads_the_new_span(tmp_path):
    """With data.spans, --out defaults to data.spans.base and the span loads like any other."""
    cfg = config(tmp_path, spans=True)
    (tmp_path / "daily" / "span-1").mkdir(parents=True)
    write_events(tmp_path / "daily" / "span-1" / "events.csv", EVENTS[:1])
    build_span(cfg, standard_logs(tmp_path), write_events(tmp_path / "new.csv"), None, 2)
    events, _, _ = load_tables(cfg)
    assert events.groupby(SPAN_COLUMN).size().to_dict() == {1: 1, 2: len(EVENTS)}
    with pytest.raises(FeedbackError, match=r"give the spans directory to write into \(--out\)"):
        build_span(config(tmp_path), standard_logs(tmp_path), tmp_path / "new.csv", None, 2)


def test_request_ids_are_stable_and_force_replaces(built, tmp_path):
    cfg, events, _, span = built
    before = (span / "exposures.csv").read_text()
    with pytest.raises(FeedbackError, match=r"span-3 already exists; pass --force"):
        build_span(cfg, standard_logs(tmp_path), events, tmp_path / "spans", 3)
    build_span(cfg, standard_logs(tmp_path), events, tmp_path / "spans", "3", force=True)
    assert (span / "exposures.csv").read_text() == before
    assert sorted(p.name for p in span.parent.iterdir()) == ["span-3"]


def test_attribution_window_and_model_choice(tmp_path):
    cfg = config(tmp_path)
    events = write_events(tmp_path / "e.csv")
    logs = standard_logs(tmp_path)
    summary = build_span(cfg, logs, events, tmp_path / "spans", 0, attribution_hours=0.5)
    rows = read_csv(tmp_path / "spans" / "span-0" / "exposures.csv")
    assert [(r["user_id"], r["item_id"]) for r in rows if r["engaged"] == "1"] == [("u3", "r")]
    assert summary["engaged_exposures"] == 1
    build_span(cfg, logs, events, tmp_path / "spans", 1, model=names.RETRIEVAL_BRUTE_FORCE_MODEL)
    rows = read_csv(tmp_path / "spans" / "span-1" / "exposures.csv")
    assert [(r["model_name"], r["user_id"], r["item_id"], r["engaged"]) for r in rows] == [
        ("retrieval_brute_force", "u1", "a", "0")]


def test_default_signature_alias_k_cap_and_duplicates(tmp_path):
    cfg = config(tmp_path)
    events = write_events(tmp_path / "e.csv")
    log = recommend_log(["u1"], [["a", "b", "c"]], T0, signature=names.DEFAULT_SIGNATURE, k=[2])
    write_logs(tmp_path / "one.tfrecord", [log, recommend_log(["u1"], [["", ""]], T1, signature="")])
    write_logs(tmp_path / "copy.tfrecord", [log])  # the same record again: counted once
    summary = build_span(cfg, [str(tmp_path / "one.tfrecord"), str(tmp_path / "copy.tfrecord")], events,
                         tmp_path / "spans", 0)
    rows = read_csv(tmp_path / "spans" / "span-0" / "exposures.csv")
    assert [(r["item_id"], r["position"], r["engaged"]) for r in rows] == [("a", "1", "0"), ("b", "2", "1")]
    assert summary["skipped"] == {"duplicate record": 1, "response row with no items": 1}


# -- errors -------------------------------------------------------------------


def test_no_log_files_matched(tmp_path):
    with pytest.raises(FeedbackError, match=r"no request log files .*match .*nothing-\*\.tfrecord.*; expected the model server's"):
        build_span(config(tmp_path), str(tmp_path / "nothing-*.tfrecord"), write_events(tmp_path / "e.csv"),
                   tmp_path / "spans", 0)


def test_a_file_that_is_not_a_tfrecord_is_named(tmp_path):
    standard_logs(tmp_path)
    (tmp_path / "request_logs" / "zz-notes.tfrecord").write_text("these are not records\n")
    with pytest.raises(FeedbackError, match=r"zz-notes\.tfrecord: request log record 0 is corrupt.*expected uncompressed TFRecord"):
        build_span(config(tmp_path), str(tmp_path / "request_logs"), write_events(tmp_path / "e.csv"),
                   tmp_path / "spans", 0)
    assert not (tmp_path / "spans" / "span-0").exists()


EXAMPLE = tf.train.Example(features=tf.train.Features(feature={
    "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"u1"]))})).SerializeToString()


@pytest.mark.parametrize("record,problem", [
    (b"\xff\xff\xff not a proto", "record 0 is not a PredictionLog: Error parsing message"),  # upb's words
    (EXAMPLE, "record 0 is not a PredictionLog: it has no log type"),  # parses, but as nothing
])
def test_a_tfrecord_of_something_else_is_named(tmp_path, record, problem):
    with tf.io.TFRecordWriter(str(tmp_path / "junk.tfrecord")) as w:
        w.write(record)
    with pytest.raises(FeedbackError, match=r"junk\.tfrecord: request log " + problem):
        build_span(config(tmp_path), str(tmp_path / "junk.tfrecord"), write_events(tmp_path / "e.csv"),
                   tmp_path / "spans", 0)


def test_no_records_for_the_model(tmp_path):
    write_logs(tmp_path / "r.tfrecord", [other_log(names.RANKING_MODEL, names.SCORE_SIGNATURE)])
    with pytest.raises(FeedbackError, match=r"no request logs for model 'recommender' signature 'recommend'.*"
                                            r"'ranking/score': 1"):
        build_span(config(tmp_path), str(tmp_path / "r.tfrecord"), write_events(tmp_path / "e.csv"),
                   tmp_path / "spans", 0)


def test_bad_event_row_names_file_column_line(tmp_path):
    events = tmp_path / "e.csv"
    events.write_text(f"visitor,sku,event_time,action\nu1,a,{iso(T0)},click\nu1,b,yesterday,click\n")
    with pytest.raises(DataError) as e:
        build_span(config(tmp_path), standard_logs(tmp_path), events, tmp_path / "spans", 0)
    assert "e.csv" in str(e.value) and "column 'event_time'" in str(e.value) and "line 3" in str(e.value)
    assert not (tmp_path / "spans" / "span-0").exists()


@pytest.mark.parametrize("span", [-1, "-1", "x", "1.5", 2.5, True])
def test_span_must_be_a_non_negative_integer(tmp_path, span):
    with pytest.raises(FeedbackError, match=r"span must be an integer >= 0"):
        build_span(config(tmp_path), standard_logs(tmp_path), write_events(tmp_path / "e.csv"), tmp_path / "spans",
                   span)


# -- CLI ----------------------------------------------------------------------


def cli_args(tmp_path, *extra, logs=None):
    cfg = {"name": "fb", "schema_dir": "schemas/implicit_demo",
           "data": {"events": {"path": str(tmp_path / "base.csv"), "columns": COLUMNS, "timestamp_format": "iso8601",
                               "event_weights": {"click": 1.0, "purchase": 3.0}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return ["feedback", "build-span", "--config", str(tmp_path / "c.yaml"), "--logs", logs or standard_logs(tmp_path),
            "--events", str(write_events(tmp_path / "new.csv")), "--out", str(tmp_path / "spans"), *extra]


def test_cli_builds_a_span(tmp_path, capsys):
    # --logs is repeatable; a pattern matching nothing is fine when another one matches.
    assert main(cli_args(tmp_path, "--span", "2", "--attribution-hours", "48", "--logs", "/nonexistent/*.tfrecord")) == 0
    out = capsys.readouterr().out
    assert "span-2" in out and "exposures: 8, engaged within 48 h: 4 (50.00%)" in out and "events written: 7" in out
    assert "skipped: other model/signature: 2" in out
    assert len(read_csv(tmp_path / "spans" / "span-2" / "exposures.csv")) == 8


@pytest.mark.parametrize("extra,logs,message", [
    (["--span", "-2"], None, "span must be an integer >= 0"),
    (["--span", "1", "--model", "nope"], None, "no request logs for model 'nope'"),
    (["--span", "1"], "/nonexistent/*.tfrecord", "no request log files (*.tfrecord) match ['/nonexistent/*.tfrecord']"),
    (["--span", "1", "--events", "/nonexistent/new.csv"], None, "/nonexistent/new.csv: new events file not found"),
])
def test_cli_user_errors_exit_2(tmp_path, capsys, extra, logs, message):
    assert main(cli_args(tmp_path, *extra, logs=logs)) == 2
    assert f"recsys: error: FeedbackError: {message}" in capsys.readouterr().err
    assert not (tmp_path / "spans" / "span-1").exists()


def test_cli_existing_span_needs_force(tmp_path, capsys):
    assert main(cli_args(tmp_path, "--span", "1")) == 0
    assert main(cli_args(tmp_path, "--span", "1")) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(cli_args(tmp_path, "--span", "1", "--force")) == 0


# -- the real model server's request logs -------------------------------------


def test_real_model_server_logs_become_a_span(tmp_path):
    """The model server (request logging on) serves the test models to the real client; its logs -> a span."""
    import time

    from serving.client import RecommenderClient
    from serving.model_server import ModelServer, RequestLoggingOptions
    from tests.support.client_models import save_models

    logs = tmp_path / "logs"
    with ModelServer(save_models(str(tmp_path / "models"), recommender=True), grpc_port=0, rest_port=None,
                     metrics_port=None, request_logging=RequestLoggingOptions(default_dir=str(logs))) as server:
        server.wait_until_available(120)
        start = int(time.time())
        with RecommenderClient(server.grpc_address, timeout_s=30) as client:
            shown = [r.item_id for r in client.recommend("u1", k=3)]  # one Predict on the one-call model
            meta = client.signature(names.RETRIEVAL_MODEL, names.RECOMMEND_SIGNATURE)
            batch = {key: [spec.neutral_value()] * 2 for key, spec in meta.inputs.items()}
            batch.update({names.USER_ID: ["u2", "stranger"], names.HISTORY_ITEM_IDS: [[""], ["i03"]],
                          names.K: [3, 2], names.EXCLUDE_HISTORY: [True, True]})
            answer = client.predict(names.RETRIEVAL_MODEL, names.RECOMMEND_SIGNATURE, batch)[names.OUT_ITEM_IDS]
        end = int(time.time())
    # Stopping the server closed the files.
    (u2_first, _, u2_third), stranger = list(answer[0]), list(answer[1][:2])

    cfg = config(tmp_path)
    events = write_events(tmp_path / "new.csv", [
        ("u1", shown[1], end + 60, "click"),
        # After the (1 h) window; real times, so no more than a day ahead (tables refuse future events).
        ("u1", shown[2], end + 2 * HOUR, "purchase"),
        ("u2", u2_third, end + 5, "click"),
        ("stranger", "i19", end + 5, "click"),  # not recommended to them
    ])
    # The default: the one-call model's logs, i.e. exactly what u1 was shown, at the rank shown.
    summary = build_span(cfg, str(logs), events, tmp_path / "spans", 4, attribution_hours=1.0)
    rows = read_csv(tmp_path / "spans" / "span-4" / "exposures.csv")
    assert [(r["user_id"], r["item_id"], r["position"]) for r in rows] == [
        ("u1", item, str(pos)) for pos, item in enumerate(shown, 1)]
    assert all(start <= int(r["request_timestamp"]) <= end and r["model_name"] == "recommender"
               and r["model_version"] == "1" for r in rows)
    assert [(r["item_id"], r["engaged"]) for r in rows] == [(shown[0], "0"), (shown[1], "1"), (shown[2], "0")]
    assert summary["requests"] == 1 and summary["exposures"] == 3
    assert summary["other_models"] == {"retrieval/recommend": 1}  # the one-call path sent nothing else

    # The retrieval model's logs, on request: batched rows, each row its own k.
    summary = build_span(cfg, str(logs), events, tmp_path / "spans", 5, attribution_hours=1.0,
                         model=names.RETRIEVAL_MODEL)
    rows = read_csv(tmp_path / "spans" / "span-5" / "exposures.csv")
    by_user = {u: [r for r in rows if r["user_id"] == u] for u in ("u2", "stranger")}
    assert [r["item_id"] for r in by_user["u2"]] == [u2_first, answer[0][1], u2_third]
    assert [r["item_id"] for r in by_user["stranger"]] == stranger
    assert [int(r["position"]) for r in by_user["u2"]] == [1, 2, 3]
    engaged = [(r["user_id"], r["item_id"], r["engaged_timestamp"]) for r in rows if r["engaged"] == "1"]
    assert engaged == [("u2", u2_third, str(end + 5))]
    assert summary["requests"] == 2 and summary["exposures"] == 3 + 2
