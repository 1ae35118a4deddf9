"""The report's data-statistics section: one compact table per split of a StatisticsGen
artifact (``Split-<name>/FeatureStats.pb``, a TFDV DatasetFeatureStatisticsList), read with
the tensorflow_metadata protos only (no TFDV, no TensorFlow, and none of TFDV's facets HTML,
which fetches scripts from the internet)."""

from __future__ import annotations

import os

from serving.fileio import gfile, read_bytes
from trainer.artifacts import EVAL, SPLIT_DIR, TRAIN
from trainer.report_doc import Block, Cell, Heading, Table, Text

STATS_FILE = "FeatureStats.pb"
_PREFIX = SPLIT_DIR.format("")


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def _split_table(dataset) -> Table:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    table = Table(["feature", "type", "missing", "mean", "std dev", "min", "max", "unique"])
    for f in dataset.features:
        kind = f.WhichOneof("stats")
        stats = getattr(f, kind) if kind else None
        common = getattr(stats, "common_stats", None)
        total = (common.num_missing + common.num_non_missing) if common else 0
        missing = f"{common.num_missing / total:.1%}" if total else ""
        name = ".".join(f.path.step) or f.name
        row = [Cell(name), Cell(statistics_pb2.FeatureNameStatistics.Type.Name(f.type)), Cell(missing)]
        if kind == "num_stats":
            row += [Cell(_num(v)) for v in (stats.mean, stats.std_dev, stats.min, stats.max)] + [Cell("")]
        else:
            row += [Cell("")] * 4 + [Cell(f"{stats.unique:,}" if kind == "string_stats" else "")]
        table.rows.append(row)
    return table


def statistics_blocks(statistics_uri: str | None) -> list[Block]:
    """A "data statistics" section (heading, the artifact's path, one table per split), or []."""
    if not statistics_uri or not gfile.isdir(statistics_uri):
        return []
    order = {SPLIT_DIR.format(TRAIN): 0, SPLIT_DIR.format(EVAL): 1}  # then the others, by name
    # tf.io.gfile: a local path or a URI; object stores list "directories" with a trailing slash.
    splits = sorted((d for d in (n.rstrip("/") for n in gfile.listdir(statistics_uri))
                     if d.startswith(_PREFIX) and gfile.exists(os.path.join(statistics_uri, d, STATS_FILE))),
                    key=lambda d: (order.get(d, 2), d))
    if not splits:
        return []
    blocks: list[Block] = [Heading(2, "data statistics"), Text("StatisticsGen artifact:", code=statistics_uri)]
    try:
        from tensorflow_metadata.proto.v0 import statistics_pb2
    except ImportError as e:
        return blocks + [Text(f"not shown: tensorflow_metadata unavailable ({e})")]
    for split in splits:
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        try:
            stats.ParseFromString(read_bytes(os.path.join(statistics_uri, split, STATS_FILE)))
        except Exception as e:  # a truncated or foreign file: say so, keep the rest of the report
            blocks.append(Text(f"{split[len(_PREFIX):]}: unreadable statistics ({type(e).__name__}: {e})"))
            continue
        for dataset in stats.datasets:
            blocks += [Heading(3, f"split {split[len(_PREFIX):]}: {dataset.num_examples:,} examples, "
                                  f"{len(dataset.features)} features"), _split_table(dataset)]
    return blocks
