"""The feedback loop: model-server request logs + the events that followed -> the next span.

``build_span`` reads the server's sampled Predict logs (TFRecord files of TF
Serving ``PredictionLog`` records) for one model/signature (retrieval/recommend by
default), turns every logged response row into exposures (user, item, 1-based
rank), marks an exposure ``engaged`` when that user interacted with that item
within ``attribution_hours`` after the request (first such event's time), and
writes ``<out>/span-<N>/`` for the pipeline's next run:

  events.csv     the new events, copied unchanged (the config's own columns and
                 format; named as the config's events file, events.csv in ours)
  exposures.csv  EXPOSURE_COLUMNS, one row per (request row, recommended item)

The span directory is written to a temporary directory and renamed into place;
an existing one is replaced only with ``force``. Records of other models or
signatures, and records that cannot be used, are counted by reason, never
silently dropped. A PredictRequest with B user rows gives B request ids
(``<digest of the record>-<row>``), stable across re-runs.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from serving import names
from serving.client_tensors import make_ndarray
from serving.model_server import request_log
from tfx_pipeline.config import PipelineConfig, load_config, resolve_path
from tfx_pipeline.data.tables import DataError, load_events
from trainer import features as F

EXPOSURE_COLUMNS = ("request_id", "user_id", "item_id", "position", "request_timestamp", "model_name",
                    "model_version", "engaged", "engaged_timestamp")
SPAN_PATTERN = "span-{SPAN}"  # the TFX span spec of the directories written here
EXPOSURES_FILE = "exposures.csv"

# Why a logged record or row gave no exposures (the summary's "skipped").
SKIP_OTHER = "other model/signature"
SKIP_NOT_PREDICT = "not a predict log"
SKIP_NO_TIME = "no request timestamp"
SKIP_MISSING_TENSOR = "request/response lacks user_id or item_ids"
SKIP_BAD_SHAPE = "request and response batch sizes differ"
SKIP_DUPLICATE = "duplicate record"
SKIP_EMPTY_ROW = "response row with no items"


class FeedbackError(DataError):
    """Bad feedback-loop input (logs, events, span); the message says what to fix."""


def span_dir_name(span: int) -> str:
    return f"span-{span}"


def _check_span(span) -> int:
    text = str(span).strip()
    if isinstance(span, bool) or not (text.isascii() and text.isdigit()):
        raise FeedbackError(f"span must be an integer >= 0 (the N of span-N), got {span!r}")
    return int(text)


def _log_files(log_paths) -> list[str]:
    """Globs / files / directories (their *.tfrecord) -> request log files."""
    try:
        return request_log.log_files(log_paths)
    except FileNotFoundError as e:
        raise FeedbackError(f"{e}; expected the model server's <prefix>-<timestamp>-<seq>.tfrecord files "
                            "(quote a glob so the shell does not expand it)") from e


def _read_records(path: str) -> Iterator:
    """The PredictionLog records of one request log file; a file that holds something else is an error."""
    try:
        for i, log in enumerate(request_log.read_prediction_logs(path)):
            if log.WhichOneof("log_type") is None:
                raise ValueError(f"{path}: request log record {i} is not a PredictionLog: it has no log type")
            yield log
    except ValueError as e:
        raise FeedbackError(f"{e} (expected uncompressed TFRecord files of TF Serving PredictionLog records)") from e


@dataclasses.dataclass
class _Counts:
    files: int = 0
    records: int = 0
    requests: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    others: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _signature_names(signature: str) -> set[str]:
    # serving_default (or no name at all) is the retrieval model's alias of recommend.
    return {signature, "", names.DEFAULT_SIGNATURE} if signature == names.RECOMMEND_SIGNATURE else {signature}


def read_exposures(files: Sequence[str], model: str, signature: str, counts: _Counts) -> pd.DataFrame:
    """Exposure rows (without the engagement columns) from the logged responses."""
    wanted = _signature_names(signature)
    seen: set[str] = set()
    rows = []
    for path in files:
        counts.files += 1
        for log in _read_records(path):
            counts.records += 1
            spec = log.log_metadata.model_spec
            predict = log.predict_log
            name = spec.name or predict.request.model_spec.name
            sig = spec.signature_name or predict.request.model_spec.signature_name
            if name != model or sig not in wanted:
                counts.skipped[SKIP_OTHER] += 1
                counts.others[f"{name}/{sig or names.DEFAULT_SIGNATURE}"] += 1
                continue
            if log.WhichOneof("log_type") != "predict_log":
                counts.skipped[SKIP_NOT_PREDICT] += 1
                continue
            when = int(log.log_metadata.timestamp_secs)
            if when <= 0:
                counts.skipped[SKIP_NO_TIME] += 1
                continue
            inputs, outputs = predict.request.inputs, predict.response.outputs
            if names.USER_ID not in inputs or names.OUT_ITEM_IDS not in outputs:
                counts.skipped[SKIP_MISSING_TENSOR] += 1
                continue
            users = make_ndarray(inputs[names.USER_ID]).reshape(-1)
            items = make_ndarray(outputs[names.OUT_ITEM_IDS])  # [B, max(k)], "" past a row's k
            if items.ndim != 2 or items.shape[0] != len(users):
                counts.skipped[SKIP_BAD_SHAPE] += 1
                continue
            k = make_ndarray(inputs[names.K]).reshape(-1) if names.K in inputs else None
            digest = hashlib.sha256(log.SerializeToString(deterministic=True)).hexdigest()[:16]
            if digest in seen:
                counts.skipped[SKIP_DUPLICATE] += 1
                continue
            seen.add(digest)
            version = spec.version.value or predict.response.model_spec.version.value
            for r, user in enumerate(users):
                counts.requests += 1
                limit = items.shape[1] if k is None or len(k) != len(users) else max(int(k[r]), 0)
                row = [(pos, str(item)) for pos, item in enumerate(items[r][:limit], 1) if str(item)]
                if not row:
                    counts.skipped[SKIP_EMPTY_ROW] += 1
                for pos, item in row:
                    rows.append((f"{digest}-{r}", str(user), item, pos, when, name, int(version)))
    return pd.DataFrame(rows, columns=list(EXPOSURE_COLUMNS[:7]))


def attribute(exposures: pd.DataFrame, events: pd.DataFrame, attribution_hours: float) -> pd.DataFrame:
    """Adds engaged / engaged_timestamp: the user's first event on the item in
    [request time, request time + attribution_hours]."""
    out = exposures.reset_index(drop=True)
    if out.empty:
        return out.assign(engaged=pd.Series(dtype="int64"), engaged_timestamp=pd.Series(dtype="Int64"))
    ev = (events[[F.USER_ID, F.ITEM_ID, F.TIMESTAMP]].rename(columns={F.TIMESTAMP: "engaged_timestamp"})
          .astype({"engaged_timestamp": "int64"}).sort_values("engaged_timestamp"))
    left = out.assign(_order=np.arange(len(out))).astype({"request_timestamp": "int64"}).sort_values("request_timestamp")
    merged = pd.merge_asof(left, ev, left_on="request_timestamp", right_on="engaged_timestamp",
                           by=[F.USER_ID, F.ITEM_ID], direction="forward",
                           tolerance=int(round(attribution_hours * 3600)), allow_exact_matches=True)
    merged = merged.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    merged["engaged_timestamp"] = merged["engaged_timestamp"].astype("Int64")
    merged["engaged"] = merged["engaged_timestamp"].notna().astype("int64")
    return merged[list(EXPOSURE_COLUMNS)]


def build_span(config: PipelineConfig | str | os.PathLike, log_paths, events_path: str | os.PathLike,
               out_dir: str | os.PathLike | None, span, attribution_hours: float = 24.0,
               model: str = names.RECOMMENDER_MODEL, signature: str = names.RECOMMEND_SIGNATURE,
               force: bool = False) -> dict:
    """Writes ``out_dir/span-<span>/{events.csv, exposures.csv}``; returns the summary.

    ``model`` defaults to the one-call ``recommender``, whose logged answers are the
    final lists the users were shown, so ``position`` is the rank they saw. The
    retrieval models' logs (``model="retrieval"``) hold the candidates the two-stage
    client asked for, which it then re-ranked and cut: their positions are retrieval ranks.

    The events file keeps the config's events file name (events.csv in the shipped
    configs) and bytes. ``out_dir`` None: the config's ``data.spans.base``.

    Raises:
        FeedbackError (a DataError): bad span number, no log files, a file that is
            not a PredictionLog TFRecord, no records for model/signature, an existing
            span directory without ``force``, a bad attribution window; DataError
            for a bad events file (file, column, line).
    """
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    span = _check_span(span)
    if not attribution_hours > 0:
        raise FeedbackError(f"attribution_hours must be > 0, got {attribution_hours}")
    spans = cfg.data.spans
    if spans is not None and spans.pattern != SPAN_PATTERN:
        raise FeedbackError(f"data.spans.pattern is {spans.pattern!r}; build-span writes {SPAN_PATTERN!r} directories")
    if out_dir is None and spans is None:
        raise FeedbackError("give the spans directory to write into (--out); the config has no data.spans.base")
    out_root = Path(out_dir).absolute() if out_dir is not None else resolve_path(spans.base)
    target = out_root / span_dir_name(span)
    if target.exists() and not force:
        raise FeedbackError(f"{target} already exists; pass --force to replace it")
    events_src = Path(events_path).absolute()  # cwd-relative, not repo-relative like config paths
    if not events_src.is_file():
        raise FeedbackError(f"{events_src}: new events file not found (--events)")
    files = _log_files(log_paths)

    counts = _Counts()
    exposures = read_exposures(files, model, signature, counts)
    if counts.records - counts.skipped[SKIP_OTHER] == 0:
        found = dict(counts.others) or "none"
        raise FeedbackError(f"no request logs for model {model!r} signature {signature!r} in {len(files)} file(s) "
                            f"({counts.records} record(s); by model/signature: {found}); check --model and that "
                            "the server logs that model")
    events = load_events(cfg, events_src)  # validated like the config's events table
    exposures = attribute(exposures, events, attribution_hours)

    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{span_dir_name(span)}.tmp-", dir=out_root))
    try:
        shutil.copyfile(events_src, tmp / Path(cfg.data.events.path).name)  # unchanged: the dataset's format
        exposures.to_csv(tmp / EXPOSURES_FILE, index=False)
        if target.exists():
            if not force:
                raise FeedbackError(f"{target} appeared while building; pass --force to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{span_dir_name(span)}.old-", dir=out_root))
            os.rename(target, old / "span")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    engaged = int(exposures["engaged"].sum()) if len(exposures) else 0
    return {
        "span": span, "span_dir": str(target), "model": model, "signature": signature,
        "log_files": counts.files, "records_read": counts.records, "requests": counts.requests,
        "exposures": len(exposures), "engaged_exposures": engaged,
        "engaged_rate": engaged / len(exposures) if len(exposures) else 0.0,
        "events_written": len(events), "attribution_hours": float(attribution_hours),
        "skipped": dict(counts.skipped), "other_models": dict(counts.others),
    }


def format_summary(s: dict) -> str:
    skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(s["skipped"].items())) or "none"
    lines = [
        f"wrote {s['span_dir']}",
        f"  request logs: {s['records_read']} record(s) in {s['log_files']} file(s); "
        f"{s['requests']} request row(s) for {s['model']}/{s['signature']}",
        f"  exposures: {s['exposures']}, engaged within {s['attribution_hours']:g} h: {s['engaged_exposures']} "
        f"({100 * s['engaged_rate']:.2f}%)",
        f"  events written: {s['events_written']}",
        f"  skipped: {skipped}",
    ]
    if s["other_models"]:
        lines.append("  other models/signatures: " + ", ".join(f"{k}: {n}" for k, n in sorted(s["other_models"].items())))
    return "\n".join(lines)
