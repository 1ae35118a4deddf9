"""The data gate's work: anomalies, train/eval skew and run-to-run drift, with TFDV.

ExampleValidator records anomalies but does not stop a run; this gate reads them,
adds the two distribution checks TFDV offers (L-infinity distance for categorical
features, Jensen-Shannon divergence for numeric ones) and raises one error listing
every finding, so nothing downstream (Transform, Trainer, Pusher) runs on bad data.

Drift baseline: after a clean run, the train statistics are copied to
``baseline_dir``; the next run compares against them. (A file rather than an MLMD
resolver so the comparison is with the last run that *passed*, not merely the last
one that ran.)

Spans datasets: the examples of the run's new span (split ``latest_span``) are
checked against the schema too, and drift compares the new span's statistics with
those of the previous span that passed (``baseline_dir/span-<N>/``), so a change in
the new day's data is not diluted by the older spans a run also reads.

Every path (the artifacts, ``baseline_dir``, the report) is read and written through
``tf.io.gfile``: a local path or a URI (gs://, s3:// ...).
"""

from __future__ import annotations

import json
import os

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from serving.features import HOURS_SINCE_PREV_EVENT
from serving.fileio import copy_file, gfile, read_bytes, write_text
from trainer.artifacts import EVAL, LATEST_SPAN_SPLIT, TRAIN, split_dir

LATEST_SPAN = LATEST_SPAN_SPLIT

STATS_FILE = "FeatureStats.pb"
ANOMALIES_FILE = "SchemaDiff.pb"
REPORT_FILE = "data_validation.json"
# A copy of the latest report outside the artifact store, under the pipeline root: TFX
# removes a failed component's output directory, which held the report a failure names.
LAST_REPORT_FILE = "data_validation_last.json"

# Features that a time-ordered split shifts by design, so train/eval skew on them is not
# bad data: under a global time split the eval events come after every train event, and the
# hours since a user's previous event grow with the gap. Still checked for run-to-run drift.
TIME_SHIFTED_BY_SPLIT = {"global_time": (HOURS_SINCE_PREV_EVENT,)}


class DataValidationError(RuntimeError):
    """The data failed validation; the message lists each feature and what is wrong."""


def _split_file(uri: str, split: str, name: str) -> str:
    return os.path.join(split_dir(uri, split), name)


def load_schema(schema_uri: str) -> schema_pb2.Schema:
    path = schema_uri if schema_uri.endswith(".pbtxt") else os.path.join(schema_uri, "schema.pbtxt")
    return tfdv.load_schema_text(path)


def _anomaly_lines(anomalies: anomalies_pb2.Anomalies, label: str) -> list[str]:
    out = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = "; ".join(f"{r.short_description}: {r.description}" for r in info.reason) or info.description
        out.append(f"[{label}] feature {feature!r}: {reasons}")
    if anomalies.HasField("dataset_anomaly_info"):
        for r in anomalies.dataset_anomaly_info.reason:
            out.append(f"[{label}] dataset: {r.short_description}: {r.description}")
    return out


def _with_comparators(schema: schema_pb2.Schema, linf: float, jsd: float, exclude) -> schema_pb2.Schema:
    """A copy of the schema with drift comparators on every non-excluded feature."""
    s = schema_pb2.Schema()
    s.CopyFrom(schema)
    for f in s.feature:
        if f.name in exclude:
            continue
        if f.type == schema_pb2.BYTES:
            f.drift_comparator.infinity_norm.threshold = linf
        else:
            f.drift_comparator.jensen_shannon_divergence.threshold = jsd
    return s


def _distribution_findings(schema, current, previous, linf, jsd, exclude, label) -> tuple[list[str], dict]:
    s = _with_comparators(schema, linf, jsd, exclude)
    result = tfdv.validate_statistics(statistics=current, schema=s, previous_statistics=previous)
    values = {}
    for info in result.drift_skew_info:
        name = info.path.step[0] if info.path.step else "?"
        for m in info.drift_measurements:
            values[name] = {"type": anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(m.type),
                            "value": m.value, "threshold": m.threshold}
    lines = []
    for feature, info in sorted(result.anomaly_info.items()):
        for r in info.reason:
            lines.append(f"[{label}] feature {feature!r}: {r.description}")
    return lines, values


def _span_baselines(baseline_dir: str) -> dict[int, str]:
    out = {}
    if gfile.isdir(baseline_dir):
        for name in gfile.listdir(baseline_dir):
            name = name.rstrip("/")  # object stores list "directories" with a trailing slash
            path = os.path.join(baseline_dir, name, STATS_FILE)
            if name.startswith("span-") and name[5:].isdigit() and gfile.exists(path):
                out[int(name[5:])] = path
    return out


def check_data(stats_uri: str, schema_uri: str, anomalies_uri: str, vcfg, baseline_dir: str,
               report_uri: str, span: int | None = None, split_strategy: str = "",
               last_report_path: str = "") -> dict:
    """Raises DataValidationError on any finding; writes a JSON report either way.

    ``span``: the run's span, for spans datasets (their statistics have a
    ``latest_span`` split); None otherwise. ``split_strategy``: the examples' split
    (``TIME_SHIFTED_BY_SPLIT`` names the features it shifts on purpose, left out of the
    train/eval skew check). ``last_report_path``: where a copy of the report is written
    too, so it outlives a failed step.
    """
    schema = load_schema(schema_uri)
    findings: list[str] = []
    report: dict = {"anomalies": {}, "skew_train_vs_eval": {}, "drift_vs_previous_run": {}}
    has_span_split = span is not None and gfile.exists(_split_file(stats_uri, LATEST_SPAN, STATS_FILE))
    for split in (TRAIN, EVAL, *([LATEST_SPAN] if has_span_split else [])):
        path = _split_file(anomalies_uri, split, ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(read_bytes(path))
        lines = _anomaly_lines(anomalies, f"{split} split anomaly")
        report["anomalies"][split] = lines
        findings += lines

    schema_findings = len(findings)
    train = tfdv.load_stats_binary(_split_file(stats_uri, TRAIN, STATS_FILE))
    evals = tfdv.load_stats_binary(_split_file(stats_uri, EVAL, STATS_FILE))
    exclude = set(vcfg.exclude_from_drift)
    shifted = [f for f in TIME_SHIFTED_BY_SPLIT.get(split_strategy, ()) if f not in exclude]
    lines, values = _distribution_findings(schema, evals, train, vcfg.skew_linf, vcfg.skew_jsd,
                                           exclude | set(shifted), "train/eval skew")
    findings += lines
    report["skew_train_vs_eval"] = values
    if shifted:
        report["skew_not_checked"] = {f: f"the {split_strategy} split shifts it by design" for f in shifted}

    if has_span_split:
        # The new span against the newest earlier span that passed.
        current_split, baseline_path = LATEST_SPAN, os.path.join(baseline_dir, f"span-{span}", STATS_FILE)
        earlier = {s: p for s, p in _span_baselines(baseline_dir).items() if s < span}
        previous_path = earlier[max(earlier)] if earlier else None
        label = f"drift of span {span} vs span {max(earlier)}" if earlier else ""
        report["span"] = span
        report["previous_span"] = max(earlier) if earlier else None
    else:
        current_split, baseline_path = TRAIN, os.path.join(baseline_dir, STATS_FILE)
        previous_path = baseline_path if gfile.exists(baseline_path) else None
        label = "drift vs previous run"
    if previous_path:
        previous = tfdv.load_stats_binary(previous_path)
        current = tfdv.load_stats_binary(_split_file(stats_uri, current_split, STATS_FILE))
        lines, values = _distribution_findings(schema, current, previous, vcfg.drift_linf, vcfg.drift_jsd,
                                               exclude, label)
        findings += lines
        report["drift_vs_previous_run"] = values
    report["findings"] = findings
    text = json.dumps(report, indent=2)
    for path in filter(None, (os.path.join(report_uri, REPORT_FILE), last_report_path)):
        gfile.makedirs(os.path.dirname(path))
        write_text(path, text)
    where = last_report_path or os.path.join(report_uri, REPORT_FILE)
    if findings:
        knobs = []
        if schema_findings:
            knobs.append("schema anomalies: fix the data, or the curated schema in schemas/ if the change is "
                         "intended")
        if len(findings) > schema_findings:
            knobs.append("skew or drift (a distribution moved; the schema does not govern these): if the shift "
                         "is expected, raise validation.skew_jsd / skew_linf (skew) or drift_jsd / drift_linf "
                         "(drift), or list the feature in validation.exclude_from_drift")
        raise DataValidationError(
            "data validation failed; nothing was trained or pushed.\n  " + "\n  ".join(findings)
            + "\nWhat to do, by kind of finding:\n  - " + "\n  - ".join(knobs)
            + f"\n(report: {where})"
        )
    gfile.makedirs(os.path.dirname(baseline_path))
    copy_file(_split_file(stats_uri, current_split, STATS_FILE), baseline_path)
    print(f"[DataGate] no anomalies; skew and drift within thresholds (report: {report_uri})", flush=True)
    return report
