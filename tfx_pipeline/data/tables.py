"""Reads a dataset's tables through its config and checks them row by row.

Maps any user's event table (CSV or Parquet) and optional user / item feature
tables onto the canonical columns:

  events: user_id (str), item_id (str), timestamp (int64 unix s), rating (float32
          label: the rating, else the weight, else event_weights[event_type], else 1)
  users:  user_id + one column per configured feature
  items:  item_id + one column per configured feature (multi-valued ones as lists)

Every problem is a ``DataError`` naming the file, the column, the row and what is
wrong, raised before anything downstream runs; nothing is dropped silently.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from tfx_pipeline.config import EventsTable, PipelineConfig, SideTable, resolve_path
from trainer import features as F

MAX_ROWS_IN_MESSAGE = 5


class DataError(ValueError):
    """Input data violates the data contract; the message says where and what."""


def read_table(path: Path, fmt: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found (check the config's data paths)")
    fmt = fmt or ("parquet" if path.suffix in (".parquet", ".pq") else "csv")
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        elif fmt == "csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="error", encoding="utf-8")
        else:
            raise DataError(f"{path}: unknown format {fmt!r}; use csv or parquet")
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: the file is empty (no header, no rows)") from e
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed row: {e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {_encoding_problem(path)}; re-encode the file as UTF-8 "
                        f"(e.g. iconv -f latin1 -t utf-8), the only encoding read") from e
    if df.empty:
        raise DataError(f"{path}: has a header but no rows")
    df.attrs["source"] = (str(path), fmt)  # for line numbers in messages (``_rows``)
    return df


def _encoding_problem(path: Path) -> str:
    """Where the first byte that is not UTF-8 is: line and column, and the bytes around it."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"line {number}, byte {e.start + 1} is not UTF-8 "
                        f"({line[max(0, e.start - 10):e.end + 10]!r})")
    return "not UTF-8"


def _record_lines(path: str) -> list[int]:
    """The physical line each CSV data record starts on (quoted fields may span lines)."""
    import csv

    starts = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # header
        line = reader.line_num + 1
        for _ in reader:
            starts.append(line)
            line = reader.line_num + 1
    return starts


def _rows(mask: np.ndarray, df: pd.DataFrame | None = None) -> str:
    """How many rows, and which: CSV lines of ``df``'s file (true lines), else 1-based row numbers."""
    bad = np.flatnonzero(mask)
    source = df.attrs.get("source") if df is not None else None
    if source and source[1] == "csv":
        lines = _record_lines(source[0])
        shown = ", ".join(str(lines[i]) if i < len(lines) else f"record {i + 1}" for i in bad[:MAX_ROWS_IN_MESSAGE])
        where = "line"
    elif source:
        shown, where = ", ".join(str(i + 1) for i in bad[:MAX_ROWS_IN_MESSAGE]), "row"
    else:
        # +2: 1-based, and the header is line 1 of a CSV.
        shown, where = ", ".join(str(i + 2) for i in bad[:MAX_ROWS_IN_MESSAGE]), "line"
    more = f" and {len(bad) - MAX_ROWS_IN_MESSAGE} more" if len(bad) > MAX_ROWS_IN_MESSAGE else ""
    return f"{len(bad)} row(s) ({where} {shown}{more})"


def _require_columns(df: pd.DataFrame, path: Path, needed: dict[str, str]) -> None:
    for role, col in needed.items():
        if col not in df.columns:
            raise DataError(
                f"{path}: missing required column {col!r} (mapped as {role!r} in the config); "
                f"columns present: {list(df.columns)}"
            )


def _nonempty_str(df: pd.DataFrame, col: str, path: Path, whitespace: str = "error") -> pd.Series:
    """An id column as strings, exactly as written (ids are never trimmed or re-formatted).

    ``whitespace`` (``data.id_whitespace``): "error" refuses ids with leading or trailing
    whitespace, which would otherwise be ids of their own beside the trimmed spelling
    ("u1 " and "u1": one user split in two, silently); "keep" accepts them as written.
    """
    values = df[col]
    if pd.api.types.is_float_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise DataError(f"{path}: column {col!r} holds {values.dtype} values; ids must be strings or integers "
                        f"(a float id such as 1.0 has no one spelling: cast the column in the file)")
    if pd.api.types.is_datetime64_any_dtype(values):
        raise DataError(f"{path}: column {col!r} holds times; ids must be strings or integers")
    s = values.astype(str)
    bad = (s.str.strip() == "").to_numpy() | values.isna().to_numpy()
    if bad.any():
        raise DataError(f"{path}: column {col!r} is empty in {_rows(bad, df)}")
    if whitespace == "error":
        padded = (s != s.str.strip()).to_numpy()
        if padded.any():
            examples = [repr(v) for v in s[padded].head(3)]
            raise DataError(
                f"{path}: column {col!r} has ids with leading or trailing whitespace in {_rows(padded, df)}: "
                f"e.g. {', '.join(examples)}. Ids are read exactly as written, so these would be ids of their "
                f"own beside the trimmed spelling; fix the file, or set data.id_whitespace: keep to read them "
                f"as written")
    return s


def _numeric(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    num = pd.to_numeric(df[col], errors="coerce")
    bad = num.isna().to_numpy() | ~np.isfinite(num.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        examples = df[col][bad].astype(str).head(3).tolist()
        raise DataError(f"{path}: column {col!r} is not a finite number in {_rows(bad, df)}: e.g. {examples}")
    return num.astype(float)


def load_events(cfg: PipelineConfig, path: Path | None = None) -> pd.DataFrame:
    spec: EventsTable = cfg.data.events
    path = path or resolve_path(spec.path)
    df = read_table(path, spec.format)
    cols = spec.columns
    _require_columns(df, path, cols)
    out = pd.DataFrame({
        F.USER_ID: _nonempty_str(df, cols["user"], path, cfg.data.id_whitespace),
        F.ITEM_ID: _nonempty_str(df, cols["item"], path, cfg.data.id_whitespace),
    })
    ts_col = cols["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(df[ts_col]):
        # A typed time column (e.g. Parquet timestamp[ns]) carries its own unit: to unix seconds,
        # whatever timestamp_format says (that setting is for numbers and strings).
        ts = df[ts_col].dt.tz_localize("UTC") if df[ts_col].dt.tz is None else df[ts_col]
        bad = ts.isna().to_numpy()
        if bad.any():
            raise DataError(f"{path}: column {ts_col!r} has no time in {_rows(bad, df)}")
        out[F.TIMESTAMP] = (ts.astype("int64") // 10**9).to_numpy()
    elif spec.timestamp_format == "iso8601":
        ts = pd.to_datetime(df[ts_col], errors="coerce", utc=True)
        bad = ts.isna().to_numpy()
        if bad.any():
            raise DataError(f"{path}: column {ts_col!r} is not an ISO-8601 time in {_rows(bad, df)}")
        out[F.TIMESTAMP] = (ts.astype("int64") // 10**9).to_numpy()
    else:
        out[F.TIMESTAMP] = _numeric(df, ts_col, path).astype("int64")
    if (out[F.TIMESTAMP] < 0).any():
        raise DataError(f"{path}: column {ts_col!r} is negative in {_rows((out[F.TIMESTAMP] < 0).to_numpy(), df)}")
    horizon = spec.max_future_seconds
    future = (out[F.TIMESTAMP] > time.time() + horizon).to_numpy()
    if future.any():
        hint = (" (these look like milliseconds or microseconds: the column must be unix seconds)"
                if out[F.TIMESTAMP].max() > 1e11 else "")
        raise DataError(f"{path}: column {ts_col!r} is more than {horizon} s in the future "
                        f"(data.events.max_future_seconds) in {_rows(future, df)}, "
                        f"e.g. {int(out[F.TIMESTAMP][future].iloc[0])}{hint}")

    if "rating" in cols:
        out[F.RATING_LABEL] = _numeric(df, cols["rating"], path)
    elif "weight" in cols:
        out[F.RATING_LABEL] = _numeric(df, cols["weight"], path)
    elif "event_type" in cols:
        types = df[cols["event_type"]].astype(str)
        if spec.event_weights:
            unknown = ~types.isin(list(spec.event_weights))
            if unknown.any():
                raise DataError(
                    f"{path}: column {cols['event_type']!r} has event type(s) "
                    f"{sorted(types[unknown].unique())[:5]} not in data.events.event_weights in {_rows(unknown.to_numpy(), df)}"
                )
            out[F.RATING_LABEL] = types.map(spec.event_weights).astype(float)
        else:
            out[F.RATING_LABEL] = 1.0
    else:
        out[F.RATING_LABEL] = 1.0
    out = out.reset_index(drop=True)
    out.attrs["source"] = df.attrs.get("source")  # row i of ``out`` is record i of the file
    return out


def load_side_table(spec: SideTable, prefix_fn, path: Path | None = None,
                    id_whitespace: str = "error") -> pd.DataFrame:
    """Returns a frame indexed by id with canonical feature columns (``prefix_fn(col)``)."""
    path = path or resolve_path(spec.path)
    df = read_table(path, spec.format)
    _require_columns(df, path, {"id": spec.id_column, **{c: c for c in spec.features}})
    ids = _nonempty_str(df, spec.id_column, path, id_whitespace)
    dup = ids.duplicated().to_numpy()
    if dup.any():
        raise DataError(f"{path}: column {spec.id_column!r} has duplicate ids in {_rows(dup, df)}")
    out = pd.DataFrame(index=ids.to_numpy())
    for col, kind in spec.features.items():
        key = prefix_fn(col)
        if kind == F.NUMERIC:
            out[key] = _numeric(df, col, path).to_numpy()
        elif kind == F.MULTI_VALUED:
            out[key] = [
                [v for v in str(x).split(spec.multi_value_separator) if v] for x in df[col].to_numpy()
            ]
        else:
            out[key] = df[col].astype(str).to_numpy()
    return out


SPAN_COLUMN = "span"  # events of a spans dataset: the span each row came from


def selected_spans(cfg: PipelineConfig) -> list | None:
    """The spans a run reads (tfx_pipeline/data/spans.py), oldest first; None without ``data.spans``.

    Resolve once per run and pass the list on, so every table comes from the same spans.
    """
    if cfg.data.spans is None:
        return None
    from tfx_pipeline.data import spans

    return spans.select_spans(cfg.data.spans, cfg.data.events.path)


def table_paths(cfg: PipelineConfig, selected: list | None = None) -> dict[str, Path]:
    """events/users/items -> the file a run reads (for spans: the latest span's side tables)."""
    if cfg.data.spans is None:
        return {name: resolve_path(t.path) for name, t in
                (("events", cfg.data.events), ("users", cfg.data.users), ("items", cfg.data.items)) if t}
    from tfx_pipeline.data import spans

    selected = selected or selected_spans(cfg)
    out = {"events": selected[-1].directory / cfg.data.events.path}
    for name, t in (("users", cfg.data.users), ("items", cfg.data.items)):
        if t is not None:
            out[name] = spans.side_table_path(selected, t.path)
    return out


EXPOSURES_FILE = "exposures.csv"  # written by `recsys feedback build-span` (tfx_pipeline/data/feedback.py)


def load_exposures(cfg: PipelineConfig, selected: list | None = None) -> pd.DataFrame | None:
    """Logged exposures of every selected span that has ``exposures.csv``; None if none has.

    Canonical columns: user_id, item_id, timestamp (the request time), engaged (0/1).
    """
    if cfg.data.spans is None:
        return None
    frames = []
    for s in selected or selected_spans(cfg):
        path = s.directory / EXPOSURES_FILE
        if not path.exists():
            continue
        df = read_table(path, "csv")
        needed = {"user_id": "user_id", "item_id": "item_id", "request_timestamp": "request_timestamp",
                  "engaged": "engaged"}
        _require_columns(df, path, needed)
        engaged = _numeric(df, "engaged", path)
        bad = ~engaged.isin([0, 1]).to_numpy()
        if bad.any():
            raise DataError(f"{path}: column 'engaged' must be 0 or 1 in {_rows(bad, df)}")
        frames.append(pd.DataFrame({
            F.USER_ID: _nonempty_str(df, "user_id", path, cfg.data.id_whitespace),
            F.ITEM_ID: _nonempty_str(df, "item_id", path, cfg.data.id_whitespace),
            F.TIMESTAMP: _numeric(df, "request_timestamp", path).astype("int64"),
            "engaged": engaged.astype("int64")}))
    return pd.concat(frames, ignore_index=True) if frames else None


def input_files(cfg: PipelineConfig) -> list[Path]:
    """Every file a run reads (each selected span's events and exposures, the side tables)."""
    selected = selected_spans(cfg)
    paths = table_paths(cfg, selected)
    if selected is None:
        return list(paths.values())
    exposures = [s.directory / EXPOSURES_FILE for s in selected if (s.directory / EXPOSURES_FILE).exists()]
    return ([s.directory / cfg.data.events.path for s in selected] + exposures
            + [p for k, p in paths.items() if k != "events"])


def _span_events(cfg: PipelineConfig, selected: list) -> pd.DataFrame:
    frames = []
    for s in selected:
        frame = load_events(cfg, s.directory / cfg.data.events.path)
        frame[SPAN_COLUMN] = s.span
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out.attrs.pop("source", None)  # rows of several files: messages give row numbers of the whole
    return out


def load_tables(cfg: PipelineConfig, selected: list | None = None,
                ) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """Events, users (or None), items (or None), validated against each other.

    With ``data.spans``, events are those of every selected span (``selected``, else
    resolved now), with their span number in ``SPAN_COLUMN``; side tables are the
    newest selected span's snapshot.
    """
    if cfg.data.spans is not None:
        selected = selected or selected_spans(cfg)
    paths = table_paths(cfg, selected)
    events = _span_events(cfg, selected) if selected is not None else load_events(cfg)
    users = (load_side_table(cfg.data.users, F.user_feature, paths.get("users"), cfg.data.id_whitespace)
             if cfg.data.users else None)
    items = (load_side_table(cfg.data.items, F.item_feature, paths.get("items"), cfg.data.id_whitespace)
             if cfg.data.items else None)
    events_path = paths["events"]
    for table, col, name in ((users, F.USER_ID, "users"), (items, F.ITEM_ID, "items")):
        if table is None:
            continue
        missing = ~events[col].isin(table.index)
        if missing.any():
            ids = sorted(events.loc[missing, col].unique())[:5]
            raise DataError(
                f"{events_path}: {name} table has no row for {col} {ids} used in {_rows(missing.to_numpy(), events)}; "
                f"add them to the {name} table"
            )
    return events, users, items


def catalogue(events: pd.DataFrame, items: pd.DataFrame | None) -> list[str]:
    """Every candidate item id: the item table's ids plus any id seen only in events."""
    ids = set(events[F.ITEM_ID].unique())
    if items is not None:
        ids |= set(items.index)
    return sorted(ids)
