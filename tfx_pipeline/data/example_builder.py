"""Turns canonical tables into tf.Examples with a Beam job.

For every interaction: the user's features, the user's N most recent earlier items
(strictly before the event's timestamp, so no event leaks its own future), context
(hour of day, day of week, hours since the user's previous event), the item's
features and the labels. Each example is assigned to a time-based split
(trainer/splits.py). Two more outputs serve training and export:

- items (candidates): one example per catalogue item (item id + item features), so every
  item, interacted with or not, gets a candidate embedding and can be indexed;
- users (user state): one example per user with their features and their latest N items
  over all events, so a served model can recommend for a known user id alone.

Rows are grouped by user inside Beam (GroupByKey), so the per-user work scales out
with the runner; the tables are read and validated up front by tables.py, where a
bad row can be reported with its file and line.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
from tfx_bsl.coders import example_coder

from trainer import splits
from trainer import features as F
from trainer.artifacts import (CANDIDATES_SPLIT, EXPOSURES_SPLIT, LATEST_SPAN_SPLIT, SPLIT_DIR,  # noqa: F401
                               USER_STATE_SPLIT)



# -- rows -> serialized tf.Examples --------------------------------------------
# Rows are plain dicts of lists; they are encoded in batches by tfx_bsl's C++
# RecordBatch -> tf.Example encoder (Arrow columns in, serialized protos out), which
# avoids building one tf.train.Example message per row in Python.

_ARROW_TYPES = {"bytes": pa.list_(pa.binary()), "int": pa.list_(pa.int64()), "float": pa.list_(pa.float32())}


def column_types(side_kinds: dict[str, str], keys: Iterable[str]) -> dict[str, str]:
    """Arrow value type ("bytes" | "int" | "float") of every example key."""
    core = {
        F.USER_ID: "bytes", F.ITEM_ID: "bytes", F.HISTORY_ITEM_IDS: "bytes", F.TIMESTAMP: "int",
        F.HOUR_OF_DAY: "int", F.DAY_OF_WEEK: "int", F.HOURS_SINCE_PREV_EVENT: "float",
        F.RATING_LABEL: "float", F.ENGAGED_LABEL: "int",
    }
    side = {k: ("float" if kind == F.NUMERIC else "bytes") for k, kind in side_kinds.items()}
    types = {**core, **side}
    return {k: types[k] for k in keys}


def encode_rows(rows: list[dict], types: dict[str, str]) -> list[bytes]:
    """Serialized tf.Examples for rows of {key: list of values}."""
    if not rows:
        return []
    arrays = [pa.array([r[k] for r in rows], type=_ARROW_TYPES[t]) for k, t in types.items()]
    return example_coder.RecordBatchToExamples(pa.RecordBatch.from_arrays(arrays, list(types)))


def _side_value(value, kind: str) -> list:
    if kind == F.NUMERIC:
        return [float(value)]
    if kind == F.MULTI_VALUED:
        return [str(v).encode() for v in value]
    return [str(value).encode()]


def hour_and_weekday(ts: int) -> tuple[int, int]:
    """UTC hour of day and weekday (Monday = 0) of a unix timestamp."""
    # 1970-01-01 was a Thursday (weekday 3).
    return (ts // 3600) % 24, (ts // 86400 + 3) % 7


# -- the per-user work (pure, tested without Beam) ------------------------------

def user_examples(
    user_id: str,
    events: list[tuple[int, int, str, float, str]],
    history_length: int,
    engagement_threshold: float,
    user_row: dict | None,
    items: dict[str, dict] | None,
    side_kinds: dict[str, str],
    exposures: list[tuple[int, str]] = (),
) -> Iterator[tuple[str, dict]]:
    """Yields (split, row) for one user's events; a row maps example keys to value lists.

    Args:
      events: (timestamp, row_order, item_id, rating, split[, in_latest_span]) tuples, any
        order; rows of events in the latest span are yielded a second time under
        LATEST_SPAN_SPLIT.
      user_row: canonical user feature key -> value, or None.
      items: item id -> canonical item feature key -> value, or None.
      side_kinds: canonical key -> kind for every side feature.
      exposures: (request timestamp, item_id) of items shown to the user and not acted
        on (from the request logs); yielded under EXPOSURES_SPLIT with the features
        the request had (history strictly before it), rating 0 and engaged 0.
    """
    events = sorted(events, key=lambda e: (e[0], e[1]))
    times = np.array([e[0] for e in events], dtype=np.int64)
    item_ids = [e[2].encode() for e in events]
    uid = [user_id.encode()]
    user_side = {k: _side_value(user_row[k], kind) for k, kind in side_kinds.items()
                 if k.startswith(F.USER_FEATURE_PREFIX)}
    item_kinds = {k: kind for k, kind in side_kinds.items() if k.startswith(F.ITEM_FEATURE_PREFIX)}

    def row_at(ts: int, item_id: str, rating: float, engaged: int) -> dict:
        # Strictly earlier events only: ties in time are not each other's history.
        n_before = int(np.searchsorted(times, ts, side="left"))
        prev_gap_h = (ts - int(times[n_before - 1])) / 3600.0 if n_before else 0.0
        hour, weekday = hour_and_weekday(int(ts))
        row = {
            F.USER_ID: uid,
            F.ITEM_ID: [item_id.encode()],
            F.HISTORY_ITEM_IDS: item_ids[max(0, n_before - history_length):n_before],
            F.TIMESTAMP: [int(ts)],
            F.HOUR_OF_DAY: [hour],
            F.DAY_OF_WEEK: [weekday],
            F.HOURS_SINCE_PREV_EVENT: [prev_gap_h],
            F.RATING_LABEL: [rating],
            F.ENGAGED_LABEL: [engaged],
            **user_side,
        }
        if item_kinds:
            item_row = items[item_id]
            row.update({k: _side_value(item_row[k], kind) for k, kind in item_kinds.items()})
        return row

    for ts, _, item_id, rating, split, *latest in events:
        row = row_at(ts, item_id, rating, 1 if rating >= engagement_threshold else 0)
        yield split, row
        if latest and latest[0]:
            yield LATEST_SPAN_SPLIT, row
    for ts, item_id in exposures:
        yield EXPOSURES_SPLIT, row_at(int(ts), item_id, 0.0, 0)


def user_state_row(user_id: str, events, history_length: int, user_row: dict | None,
                   side_kinds: dict[str, str]) -> dict:
    """The user's latest state over all events: features + last N items."""
    events = sorted(events, key=lambda e: (e[0], e[1]))
    row = {
        F.USER_ID: [user_id.encode()],
        F.HISTORY_ITEM_IDS: [e[2].encode() for e in events[-history_length:]],
        F.TIMESTAMP: [int(events[-1][0])],
    }
    for key, kind in side_kinds.items():
        if key.startswith(F.USER_FEATURE_PREFIX):
            row[key] = _side_value(user_row[key], kind)
    return row


def candidate_row(item_id: str, item_row: dict | None, side_kinds: dict[str, str]) -> dict:
    row = {F.ITEM_ID: [item_id.encode()]}
    for key, kind in side_kinds.items():
        if key.startswith(F.ITEM_FEATURE_PREFIX):
            row[key] = _side_value(item_row[key], kind)
    return row


# -- the Beam job ---------------------------------------------------------------

def _write(rows, out_dir: str, split: str, types: dict[str, str], num_shards: int, label: str):
    return (
        rows
        | f"Batch{label}" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
        | f"Encode{label}" >> beam.FlatMap(encode_rows, types)
        | f"Write{label}" >> beam.io.WriteToTFRecord(
            os.path.join(out_dir, SPLIT_DIR.format(split), "data"),
            file_name_suffix=".gz",
            num_shards=num_shards,
            compression_type=beam.io.filesystem.CompressionTypes.GZIP,
        )
    )


def _usable_exposures(exposures: pd.DataFrame | None, events: pd.DataFrame,
                      items: pd.DataFrame | None) -> dict[str, list[tuple[int, str]]]:
    """user -> [(request ts, item)] of not-engaged exposures the examples can describe.

    Engaged exposures are already interactions (their events); exposures of users with
    no events in the run's window, or of items missing from the item table, have no
    features to build from: they are counted and reported, not used.
    """
    if exposures is None or exposures.empty:
        return {}
    neg = exposures[exposures["engaged"] == 0]
    ok = neg[F.USER_ID].isin(set(events[F.USER_ID]))
    if items is not None:
        ok &= neg[F.ITEM_ID].isin(items.index)
    if (~ok).any():
        print(f"[ExampleBuilder] {int((~ok).sum())} of {len(neg)} not-engaged exposures left out: user without "
              "events in the window or item not in the item table", flush=True)
    out: dict[str, list] = {}
    for user, ts, item in zip(neg[F.USER_ID][ok], neg[F.TIMESTAMP][ok], neg[F.ITEM_ID][ok]):
        out.setdefault(user, []).append((int(ts), item))
    return out


def check_split(events: pd.DataFrame, split: pd.Series, split_cfg) -> None:
    """Refuses a split that leaves train or eval empty (DataError: what happened, what to change);
    says what a log whose events all share one time gets (empty histories, constant context)."""
    from tfx_pipeline.data.tables import DataError

    n_train, n_eval = int((split == splits.TRAIN).sum()), int((split == splits.EVAL).sum())
    how = f"examples.split {split_cfg.strategy!r}"
    if n_eval == 0:
        if split_cfg.strategy in ("per_user", "leave_last_one"):
            most = int(events.groupby(F.USER_ID).size().max()) if len(events) else 0
            raise DataError(
                f"{how} left no eval rows: only users with at least examples.split.min_user_events "
                f"({split_cfg.min_user_events}) events get an eval event, and the most any user has is {most}; "
                f"lower min_user_events (>= 2 keeps a train event per user) or use strategy global_time")
        raise DataError(f"{how} left no eval rows out of {len(events)} events; the log is too small to evaluate on")
    if n_train == 0:
        raise DataError(f"{how} left no train rows ({n_eval} eval, {len(events)} events in all): "
                        f"the log needs more events, or a smaller examples.split.eval_fraction")
    times = events[F.TIMESTAMP]
    if len(times) > 1 and times.nunique() == 1:
        print(f"[ExampleBuilder] every one of the {len(events):,} events has the same timestamp "
              f"({int(times.iloc[0])}): histories are empty (events at the same time are not each other's "
              f"history), hour, weekday and recency are constant, and the {split_cfg.strategy} split orders "
              f"events by their row in the file ({n_train:,} train / {n_eval:,} eval): give real times for "
              f"history features and a split by time", flush=True)


def build_examples(
    events: pd.DataFrame,
    users: pd.DataFrame | None,
    items: pd.DataFrame | None,
    cfg,
    out_uri: str,
    beam_pipeline_args: list[str] | None = None,
    exposures: pd.DataFrame | None = None,
) -> dict[str, int]:
    """Runs the Beam job, writing ``out_uri/Split-<name>/``; returns example counts per split.

    Events with a ``span`` column (a spans dataset) also fill LATEST_SPAN_SPLIT;
    ``exposures`` (tables.load_exposures) with engaged 0 fill EXPOSURES_SPLIT.
    """
    from tfx_pipeline.data.tables import SPAN_COLUMN, catalogue

    ex_cfg = cfg.examples
    side_kinds = cfg.side_features()
    split = splits.assign_splits(
        events, ex_cfg.split.strategy, ex_cfg.split.eval_fraction, ex_cfg.split.min_user_events
    )
    check_split(events, split, ex_cfg.split)
    shown = _usable_exposures(exposures, events, items)
    has_spans = SPAN_COLUMN in events.columns
    latest = (events[SPAN_COLUMN] == events[SPAN_COLUMN].max()) if has_spans else pd.Series(False, index=events.index)
    interaction_splits = ((*splits.SPLIT_NAMES, LATEST_SPAN_SPLIT) if has_spans else splits.SPLIT_NAMES) + (
        (EXPOSURES_SPLIT,) if shown else ())
    rows = list(zip(
        events[F.USER_ID].to_numpy(),
        events[F.TIMESTAMP].to_numpy(dtype=np.int64).tolist(),
        range(len(events)),
        events[F.ITEM_ID].to_numpy(),
        events[F.RATING_LABEL].to_numpy(dtype=float).tolist(),
        split.to_numpy(),
        latest.tolist(),
    ))
    user_rows = users.to_dict("index") if users is not None else {}
    item_rows = items.to_dict("index") if items is not None else None
    item_ids = catalogue(events, items)
    counts = {s: int((split == s).sum()) for s in splits.SPLIT_NAMES}
    counts[CANDIDATES_SPLIT] = len(item_ids)
    counts[USER_STATE_SPLIT] = int(events[F.USER_ID].nunique())
    if has_spans:
        counts[LATEST_SPAN_SPLIT] = int(latest.sum())
    if shown:
        counts[EXPOSURES_SPLIT] = sum(len(v) for v in shown.values())

    example_types = column_types(side_kinds, [
        F.USER_ID, F.ITEM_ID, F.HISTORY_ITEM_IDS, F.TIMESTAMP, F.HOUR_OF_DAY, F.DAY_OF_WEEK,
        F.HOURS_SINCE_PREV_EVENT, F.RATING_LABEL, F.ENGAGED_LABEL, *side_kinds])
    user_types = column_types(side_kinds, [F.USER_ID, F.HISTORY_ITEM_IDS, F.TIMESTAMP,
                                           *cfg.user_features()])
    item_types = column_types(side_kinds, [F.ITEM_ID, *cfg.item_features()])

    options = beam.options.pipeline_options.PipelineOptions(beam_pipeline_args or [])
    with beam.Pipeline(options=options) as p:
        by_user = (
            p
            | "Events" >> beam.Create(rows, reshuffle=False)
            | "KeyByUser" >> beam.Map(lambda r: (r[0], tuple(r[1:])))
            | "GroupByUser" >> beam.GroupByKey()
        )
        tagged = by_user | "BuildExamples" >> beam.FlatMap(
            lambda kv: user_examples(kv[0], list(kv[1]), ex_cfg.history_length, ex_cfg.engagement_threshold,
                                     user_rows.get(kv[0]), item_rows, side_kinds, shown.get(kv[0], ()))
        )
        parts = tagged | "BySplit" >> beam.Partition(
            lambda kv, n: interaction_splits.index(kv[0]), len(interaction_splits)
        )
        for name, part in zip(interaction_splits, parts):
            _write(part | f"Drop{name}" >> beam.Values(), out_uri, name, example_types,
                   ex_cfg.num_shards, name)
        states = by_user | "UserState" >> beam.Map(
            lambda kv: user_state_row(kv[0], list(kv[1]), ex_cfg.state_length, user_rows.get(kv[0]), side_kinds)
        )
        _write(states, out_uri, USER_STATE_SPLIT, user_types, 1, "Users")
        cands = (
            p
            | "ItemIds" >> beam.Create(item_ids, reshuffle=False)
            | "Candidates" >> beam.Map(lambda i: candidate_row(i, (item_rows or {}).get(i), side_kinds))
        )
        _write(cands, out_uri, CANDIDATES_SPLIT, item_types, 1, "Items")
    return counts
