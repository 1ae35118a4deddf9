"""DataGate's checks on real TFDV statistics: what a time split shifts, what the message advises,
and a report that outlives a failed step."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2

from tfx_pipeline.config import ValidationConfig
from tfx_pipeline.data.validation import (ANOMALIES_FILE, REPORT_FILE, STATS_FILE, DataValidationError,
                                          check_data)
from trainer.artifacts import EVAL, TRAIN, split_dir


def _write_split_stats(tmp_path, train: pd.DataFrame, evals: pd.DataFrame):
    """Statistics and (empty) anomalies per split, laid out as StatisticsGen / ExampleValidator do."""
    stats_uri, anomalies_uri = str(tmp_path / "stats"), str(tmp_path / "anomalies")
    for split, frame in ((TRAIN, train), (EVAL, evals)):
        stats = tfdv.generate_statistics_from_dataframe(frame)
        os.makedirs(split_dir(stats_uri, split))
        with open(os.path.join(split_dir(stats_uri, split), STATS_FILE), "wb") as fh:
            fh.write(stats.SerializeToString())  # what tfdv.load_stats_binary reads
        os.makedirs(split_dir(anomalies_uri, split))
        with open(os.path.join(split_dir(anomalies_uri, split), ANOMALIES_FILE), "wb") as fh:
            fh.write(anomalies_pb2.Anomalies().SerializeToString())
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(train))
    schema_path = str(tmp_path / "schema.pbtxt")
    tfdv.write_schema_text(schema, schema_path)
    return stats_uri, schema_path, anomalies_uri


@pytest.fixture(scope="module")
def shifted_recency(tmp_path_factory):
    """Eval events a long time after train: hours since the previous event grow; the hour of day does not."""
    tmp_path = tmp_path_factory.mktemp("shifted")
    rng = np.random.default_rng(0)
    n = 2000
    train = pd.DataFrame({"hours_since_prev_event": rng.exponential(5.0, n).astype(np.float32),
                          "hour_of_day": rng.integers(0, 24, n).astype(np.int64)})
    evals = pd.DataFrame({"hours_since_prev_event": (500 + rng.exponential(5.0, n)).astype(np.float32),
                          "hour_of_day": rng.integers(0, 24, n).astype(np.int64)})
    return tmp_path, _write_split_stats(tmp_path, train, evals)


def _check(tmp_path, uris, name, **kwargs):
    stats_uri, schema_path, anomalies_uri = uris
    run = tmp_path / name
    return check_data(stats_uri, schema_path, anomalies_uri, ValidationConfig(), str(run / "baseline"),
                      str(run / "report"), last_report_path=str(run / "root" / "last.json"), **kwargs)


def test_a_shift_in_time_features_is_skew_under_other_splits_and_the_message_names_the_knobs(shifted_recency):
    tmp_path, uris = shifted_recency
    with pytest.raises(DataValidationError) as e:
        _check(tmp_path, uris, "per_user", split_strategy="per_user")
    msg = str(e.value)
    assert "'hours_since_prev_event'" in msg and "train/eval skew" in msg
    assert "validation.skew_jsd" in msg and "validation.exclude_from_drift" in msg
    assert "the schema does not govern these" in msg
    # The message names a report that exists after the step failed (outside the artifact store).
    last = tmp_path / "per_user" / "root" / "last.json"
    assert f"(report: {last})" in msg
    report = json.loads(last.read_text())
    assert report["skew_train_vs_eval"]["hours_since_prev_event"]["value"] > 0.3
    assert not (tmp_path / "per_user" / "baseline").exists()  # a failed check is never a baseline


def test_a_global_time_split_does_not_count_its_own_recency_shift_as_skew(shifted_recency):
    tmp_path, uris = shifted_recency
    report = _check(tmp_path, uris, "global_time", split_strategy="global_time")
    assert report["findings"] == []
    assert "hours_since_prev_event" not in report["skew_train_vs_eval"]
    assert "hour_of_day" in report["skew_train_vs_eval"]  # what should match is still compared
    assert report["skew_not_checked"] == {"hours_since_prev_event": "the global_time split shifts it by design"}
    saved = json.loads((tmp_path / "global_time" / "report" / REPORT_FILE).read_text())
    assert saved == json.loads((tmp_path / "global_time" / "root" / "last.json").read_text())
