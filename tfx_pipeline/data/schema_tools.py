"""Makes the curated schema that is checked into ``schemas/<dataset>/schema.pbtxt``.

``recsys schema infer --config ...`` builds examples from the dataset, lets TFDV
infer a schema from their statistics, then applies the curation a person would:

- environments: TRAINING has everything; SERVING lacks the labels and timestamp;
- value domains: hour 0..23, day 0..6, engaged 0..1, the label's observed range,
  non-negative recency; no string domain on ids, free text or high-cardinality
  columns (new ids are normal), but a closed domain on small categoricals;
- presence: every feature in every example; history may hold 0..N values.

Review the diff before committing a regenerated schema: it is the data contract.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from serving import features as F
from trainer.artifacts import TRAIN, split_dir

TRAINING, SERVING = "TRAINING", "SERVING"
SERVING_ABSENT = (F.RATING_LABEL, F.ENGAGED_LABEL, F.TIMESTAMP)
NO_STRING_DOMAIN = (F.USER_ID, F.ITEM_ID, F.HISTORY_ITEM_IDS)


def curate(schema: schema_pb2.Schema, cfg, stats) -> schema_pb2.Schema:
    s = schema_pb2.Schema()
    s.CopyFrom(schema)
    s.default_environment[:] = [TRAINING, SERVING]
    side = cfg.side_features()
    keep_domains = set()
    for f in s.feature:
        f.ClearField("distribution_constraints")
        if f.name in SERVING_ABSENT:
            f.not_in_environment[:] = [SERVING]
        f.presence.min_fraction = 1.0
        f.presence.min_count = 1
        if f.name == F.HISTORY_ITEM_IDS:
            f.ClearField("shape")
            f.value_count.min = 0
            # a user's stored state, and so a served request, may carry examples.sequence_length
            f.value_count.max = cfg.examples.state_length
        if f.name == F.HOUR_OF_DAY:
            f.int_domain.min, f.int_domain.max = 0, F.HOURS_IN_DAY - 1
        if f.name == F.DAY_OF_WEEK:
            f.int_domain.min, f.int_domain.max = 0, F.DAYS_IN_WEEK - 1
        if f.name == F.ENGAGED_LABEL:
            f.int_domain.min, f.int_domain.max = 0, 1
        if f.name == F.HOURS_SINCE_PREV_EVENT:
            f.float_domain.min = 0.0
        if f.name == F.RATING_LABEL:
            lo, hi = _observed_range(stats, f.name)
            f.float_domain.min, f.float_domain.max = lo, hi
        if f.type == schema_pb2.BYTES and f.HasField("int_domain"):
            f.ClearField("int_domain")  # numeric-looking ids are still opaque strings
        if f.HasField("domain") and (f.name in NO_STRING_DOMAIN or side.get(f.name) == F.TEXT):
            f.ClearField("domain")
        if f.HasField("domain"):
            keep_domains.add(f.domain)
    kept = [d for d in s.string_domain if d.name in keep_domains]
    del s.string_domain[:]
    s.string_domain.extend(kept)
    return s


def string_domain_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Feature -> the number of values of its closed string domain, in the schema at ``path``
    (``curate`` keeps one on small categoricals only); {} when there is no schema file yet."""
    from google.protobuf import text_format

    if not os.path.isfile(path):
        return {}
    schema = schema_pb2.Schema()
    with open(path) as fh:
        text_format.Parse(fh.read(), schema)
    domains = {d.name: len(d.value) for d in schema.string_domain}
    sizes = {}
    for f in schema.feature:
        if f.HasField("string_domain"):
            sizes[f.name] = len(f.string_domain.value)
        elif f.HasField("domain") and f.domain in domains:
            sizes[f.name] = domains[f.domain]
    return sizes


def _observed_range(stats, name: str) -> tuple[float, float]:
    for ds in stats.datasets:
        for feat in ds.features:
            if feat.path.step and feat.path.step[0] == name and feat.HasField("num_stats"):
                return float(feat.num_stats.min), float(feat.num_stats.max)
    raise ValueError(f"no numeric statistics for {name!r}")


def infer_schema(cfg, out_path: Path | None = None) -> Path:
    """Builds examples from cfg's data, infers and curates a schema, writes it."""
    from tfx_pipeline.data.example_builder import build_examples
    from tfx_pipeline.config import resolve_path
    from tfx_pipeline.data.tables import load_tables

    events, users, items = load_tables(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        build_examples(events, users, items, cfg, tmp)
        stats = tfdv.generate_statistics_from_tfrecord(
            os.path.join(split_dir(tmp, TRAIN), "*.gz"),
            stats_options=tfdv.StatsOptions(),
            pipeline_options=None,
        )
    schema = tfdv.infer_schema(stats, infer_feature_shape=True)
    curated = curate(schema, cfg, stats)
    out_path = Path(out_path or resolve_path(cfg.schema_dir) / "schema.pbtxt")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tfdv.write_schema_text(curated, str(out_path))
    return out_path
