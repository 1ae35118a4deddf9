"""Dated data spans: which span directories a run reads.

A dataset configured with ``data.spans`` keeps its tables in one directory per
span under ``data.spans.base``, named by a TFX span pattern (the same specs as
ExampleGen's input config): ``span-{SPAN}``, ``{YYYY}-{MM}-{DD}`` (the span is the
day number since the epoch, as in TFX), optionally with ``/v{VERSION}``. The
table paths of ``data.events`` / ``data.users`` / ``data.items`` are then file
names inside each span directory.

A run selects a span (the latest by default, or ``data.spans.span``), resolved
with TFX's own ``calculate_splits_fingerprint_span_and_version`` (latest version
of that span), and reads the events of the ``window`` most recent spans up to it
(0 = all of them: the history features need earlier events). Side tables are
catalogue snapshots: the newest selected span that has the file wins.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import tensorflow as tf
from tfx.components.example_gen import utils as example_gen_utils
from tfx.proto import example_gen_pb2, range_config_pb2

_SPEC_REGEX = (
    (re.compile(r"\{SPAN(?::[^}]*)?\}"), r"(?P<span>\d+)"),
    (re.compile(r"\{VERSION(?::[^}]*)?\}"), r"(?P<version>\d+)"),
    (re.compile(r"\{YYYY\}"), r"(?P<yyyy>\d{4})"),
    (re.compile(r"\{MM\}"), r"(?P<mm>\d{2})"),
    (re.compile(r"\{DD\}"), r"(?P<dd>\d{2})"),
)


class SpanError(ValueError):
    """No span matches, or a selected span lacks a table; the message says where to look."""


@dataclasses.dataclass(frozen=True)
class SpanInput:
    span: int
    version: int | None
    directory: Path  # the resolved span directory (the latest version of that span)
    fingerprint: str  # TFX's fingerprint of the span's events file(s)


def _pattern_regex(pattern: str) -> re.Pattern:
    regex = example_gen_utils._glob_to_regex(pattern)  # TFX's own glob -> regex, for parity
    for spec, group in _SPEC_REGEX:
        name = re.search(r"\?P<(\w+)>", group).group(1)
        first, *rest = spec.split(regex)
        # A repeated spec must match the same text as its first occurrence.
        regex = first + "".join((group if i == 0 else f"(?P={name})") + part for i, part in enumerate(rest))
    return re.compile(regex + "$")


def _glob_pattern(pattern: str) -> str:
    out = pattern
    for spec, _ in _SPEC_REGEX:
        out = spec.sub("*", out)
    return out


def available_spans(base: Path, pattern: str) -> list[int]:
    """Span numbers of every path under ``base`` matching ``pattern`` (TFX specs), ascending."""
    regex = _pattern_regex(pattern)
    spans = set()
    base = str(base).rstrip("/")
    # tf.io.gfile: local paths and gs:// / s3:// alike (as TFX's own span resolution).
    for path in tf.io.gfile.glob(f"{base}/{_glob_pattern(pattern)}"):
        m = regex.match(path[len(base) + 1:])
        if not m:
            continue
        g = m.groupdict()
        if g.get("span") is not None:
            spans.add(int(g["span"]))
        elif g.get("yyyy") is not None:
            spans.add(example_gen_utils.date_to_span_number(int(g["yyyy"]), int(g["mm"]), int(g["dd"])))
        else:
            spans.add(0)
    return sorted(spans)


def resolve_span(base: Path, pattern: str, events_file: str, span: int) -> SpanInput:
    """One span's directory (latest version), through TFX's span/version resolution."""
    split = example_gen_pb2.Input.Split(name="events", pattern=f"{pattern}/{events_file}")
    rc = range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
        start_span_number=span, end_span_number=span))
    try:
        fingerprint, got_span, version = example_gen_utils.calculate_splits_fingerprint_span_and_version(
            str(base), [split], rc)
    except ValueError as e:
        raise SpanError(f"{base}: span {span} has no {events_file} matching {pattern}/{events_file}: {e}") from e
    # TFX rewrote the split pattern with the concrete span/version.
    directory = Path(base) / os.path.dirname(split.pattern)
    return SpanInput(span=int(got_span), version=version, directory=directory, fingerprint=fingerprint)


def select_spans(spans_cfg, events_file: str) -> list[SpanInput]:
    """The spans a run reads, oldest first; the last one is the run's span."""
    from tfx_pipeline.config import resolve_path

    base = resolve_path(spans_cfg.base)
    found = available_spans(base, f"{spans_cfg.pattern}/{events_file}")
    if not found:
        raise SpanError(
            f"no span directory matches {spans_cfg.pattern!r} under {base}; create e.g. "
            f"{base / spans_cfg.pattern.replace('{SPAN}', '1')}/{events_file} "
            "(or `recsys data make-spans` to cut an existing log into spans)")
    target = found[-1] if spans_cfg.span < 0 else spans_cfg.span
    if target not in found:
        raise SpanError(f"data.spans.span is {target} but the spans under {base} are {found}")
    upto = [s for s in found if s <= target]
    chosen = upto if spans_cfg.window <= 0 else upto[-spans_cfg.window:]
    return [resolve_span(base, spans_cfg.pattern, events_file, s) for s in chosen]


def side_table_path(selected: list[SpanInput], file_name: str) -> Path:
    """The newest selected span's copy of a side table (a catalogue snapshot)."""
    for s in reversed(selected):
        path = s.directory / file_name
        if path.exists():
            return path
    raise SpanError(f"none of spans {[s.span for s in selected]} has {file_name} "
                    f"(looked in {selected[-1].directory}); every span needs it or an earlier one must have it")
