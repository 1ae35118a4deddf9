"""A tiny dataset through the real example builder and Transform, without the TFX pipeline.

``build_tiny_pipeline(root)`` generates events / users / items frames with every side
feature kind (numeric, categorical, text, multi-valued), writes examples with
``tfx_pipeline.data.example_builder.build_examples`` and runs ``trainer.preprocessing.preprocessing_fn``
with tf.Transform in-process (Beam DirectRunner). Ratings depend on the user's
gender and the item's genre, so there is something to learn. Takes ~15-25 s.

Returns a ``TinyPipeline`` (examples_uri, transform_dir, side_features,
history_length, plus the user and item ids); the session fixture in tests/trainer/conftest.py
caches one for all trainer tests.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import pandas as pd

from trainer import features as F

HISTORY_LENGTH = 5
GENRES = ["action", "comedy", "drama", "horror"]
WORDS = ["star", "night", "love", "war", "city", "dream", "ghost", "river"]


@dataclasses.dataclass(frozen=True)
class TinyPipeline:
    examples_uri: str
    transform_dir: str
    side_features: dict
    history_length: int
    user_ids: list
    item_ids: list

    def __iter__(self):  # examples_uri, transform_dir, side_features, history_length = tiny
        return iter((self.examples_uri, self.transform_dir, self.side_features, self.history_length))


def config(history_length: int = HISTORY_LENGTH, sequence_length: int = 0):
    """``sequence_length`` > ``history_length``: users' stored state holds that many items (the
    sequence objective's window; the config check then wants that objective)."""
    from tfx_pipeline.config import parse_config

    longer = ({"trainer": {"retrieval": {"objective": "sequence"}}} if sequence_length > history_length else {})
    return parse_config({
        **longer,
        "name": "tiny",
        "schema_dir": ".",
        "data": {
            "events": {"path": "x", "columns": {"user": "u", "item": "i", "timestamp": "t", "rating": "r"}},
            "users": {"path": "x", "id_column": "u",
                      "features": {"age": "numeric", "gender": "categorical", "occupation": "categorical"}},
            "items": {"path": "x", "id_column": "i",
                      "features": {"title": "text", "release_year": "numeric", "genres": "multi_valued"}},
        },
        "examples": {"history_length": history_length, "sequence_length": sequence_length,
                     "engagement_threshold": 4.0,
                     "split": {"strategy": "global_time", "eval_fraction": 0.2}, "num_shards": 1},
    })


def tables(num_users: int = 40, num_items: int = 30, num_events: int = 900, seed: int = 0):
    rng = np.random.default_rng(seed)
    user_ids = [f"u{i}" for i in range(num_users)]
    item_ids = [f"i{i}" for i in range(num_items)]
    users = pd.DataFrame({
        F.user_feature("age"): rng.integers(18, 70, num_users).astype(float),
        F.user_feature("gender"): rng.choice(["F", "M"], num_users),
        F.user_feature("occupation"): rng.choice(["artist", "engineer", "student"], num_users),
    }, index=user_ids)
    genres = [list(rng.choice(GENRES, size=rng.integers(1, 3), replace=False)) for _ in item_ids]
    items = pd.DataFrame({
        F.item_feature("title"): [" ".join(rng.choice(WORDS, 2)) + f" {i}" for i in range(num_items)],
        F.item_feature("release_year"): rng.integers(1970, 2000, num_items).astype(float),
        F.item_feature("genres"): genres,
    }, index=item_ids)
    u = rng.integers(0, num_users, num_events)
    i = np.minimum(rng.zipf(1.5, num_events) - 1, num_items - 1)  # skewed popularity
    likes = np.array([("action" in genres[b]) == (users.iloc[a][F.user_feature("gender")] == "M") for a, b in zip(u, i)])
    rating = np.clip(np.where(likes, 4.2, 2.4) + rng.normal(0, 0.8, num_events), 1, 5).round()
    events = pd.DataFrame({
        F.USER_ID: [user_ids[a] for a in u],
        F.ITEM_ID: [item_ids[b] for b in i],
        F.TIMESTAMP: 1_600_000_000 + np.sort(rng.integers(0, 90 * 86400, num_events)),
        F.RATING_LABEL: rating.astype(float),
    })
    return events, users, items


def sequential_tables(num_users: int = 40, num_items: int = 60, events_per_user: int = 15, seed: int = 0):
    """A log where order is everything: each user walks the catalogue in a cycle
    (i_k, i_k+1, i_k+2, ... mod ``num_items``) from a random start, so the next item
    is the one after the latest and popularity is flat. Side tables as in ``tables``."""
    _, users, items = tables(num_users=num_users, num_items=num_items, num_events=1, seed=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for u in users.index:
        start, t = int(rng.integers(0, num_items)), 1_600_000_000 + int(rng.integers(0, 86400))
        for step in range(events_per_user):
            t += int(rng.integers(3600, 6 * 86400))
            rows.append((u, items.index[(start + step) % num_items], t, 4.0))
    events = pd.DataFrame(rows, columns=[F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.RATING_LABEL])
    return events, users, items


def degenerate_tables(num_users: int = 60, num_items: int = 400, num_events: int = 150, seed: int = 0):
    """The shape of a log without times (bench/degenerate_log.py, scaled down): one constant
    timestamp (every history empty, hour / weekday / recency constant), 1-4 events per user,
    a catalogue far larger than the events (most items never seen, most seen ones once), and
    side features that are all constant (numeric, categorical, text, multi-valued)."""
    rng = np.random.default_rng(seed)
    user_ids = [f"u{i}" for i in range(num_users)]
    item_ids = [f"i{i}" for i in range(num_items)]
    users = pd.DataFrame({
        F.user_feature("age"): np.full(num_users, 30.0),
        F.user_feature("gender"): "F",
        F.user_feature("occupation"): "student",
    }, index=user_ids)
    items = pd.DataFrame({
        F.item_feature("title"): "the same title",
        F.item_feature("release_year"): np.full(num_items, 1990.0),
        F.item_feature("genres"): [["drama"] for _ in item_ids],
    }, index=item_ids)
    u = np.concatenate([np.arange(num_users), rng.integers(0, num_users, num_events - num_users)])
    weights = 1.0 / (np.arange(num_items) + 10.0) ** 1.05
    i = rng.choice(num_items, size=num_events, p=weights / weights.sum())
    events = pd.DataFrame({
        F.USER_ID: [user_ids[a] for a in rng.permutation(u)],
        F.ITEM_ID: [item_ids[b] for b in i],
        F.TIMESTAMP: np.full(num_events, 1_600_000_000, dtype=np.int64),
        F.RATING_LABEL: rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], num_events),
    })
    return events, users, items


def raw_feature_spec(side_features: dict) -> dict:
    """The raw example spec the curated schemas give (scalars [1], lists variable-length)."""
    import tensorflow as tf

    spec = {
        F.USER_ID: tf.io.FixedLenFeature([1], tf.string),
        F.ITEM_ID: tf.io.FixedLenFeature([1], tf.string),
        F.HISTORY_ITEM_IDS: tf.io.VarLenFeature(tf.string),
        F.TIMESTAMP: tf.io.FixedLenFeature([1], tf.int64),
        F.HOUR_OF_DAY: tf.io.FixedLenFeature([1], tf.int64),
        F.DAY_OF_WEEK: tf.io.FixedLenFeature([1], tf.int64),
        F.HOURS_SINCE_PREV_EVENT: tf.io.FixedLenFeature([1], tf.float32),
        F.RATING_LABEL: tf.io.FixedLenFeature([1], tf.float32),
        F.ENGAGED_LABEL: tf.io.FixedLenFeature([1], tf.int64),
    }
    for key, kind in side_features.items():
        if kind == F.NUMERIC:
            spec[key] = tf.io.FixedLenFeature([1], tf.float32)
        elif kind == F.MULTI_VALUED:
            spec[key] = tf.io.VarLenFeature(tf.string)
        else:
            spec[key] = tf.io.FixedLenFeature([1], tf.string)
    return spec


def run_transform(examples_uri: str, transform_dir: str, side_features: dict, temp_dir: str) -> None:
    """Analyzes the train split with preprocessing_fn and writes the Transform graph."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    from trainer.preprocessing import preprocessing_fn

    schema = schema_utils.schema_from_feature_spec(raw_feature_spec(side_features))
    source = tfxio.TFExampleRecord(file_pattern=os.path.join(examples_uri, "Split-train", "*"), schema=schema)
    fn = functools.partial(preprocessing_fn, custom_config={"side_features": side_features})
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=temp_dir):
        raw = p | "Read" >> source.BeamSource()
        transform_fn = (raw, source.TensorAdapterConfig()) | "Analyze" >> tft_beam.AnalyzeDataset(fn)
        _ = transform_fn | "Write" >> tft_beam.WriteTransformFn(transform_dir)
    # The raw metadata TFX's Transform writes beside the graph (raw_feature_spec() reads it).
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                               os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR))


def build_tiny_pipeline(root: str, seed: int = 0, make_tables=tables, sequence_length: int = 0) -> TinyPipeline:
    """``make_tables``: ``tables`` (the default), ``sequential_tables`` or ``degenerate_tables``;
    ``sequence_length``: examples.sequence_length (the user-state rows' items)."""
    import trainer  # noqa: F401  (Keras 2 before TensorFlow)
    from tfx_pipeline.data.example_builder import build_examples

    cfg = config(sequence_length=sequence_length)
    events, users, items = make_tables(seed=seed)
    examples_uri = os.path.join(root, "examples")
    transform_dir = os.path.join(root, "transform_graph")
    build_examples(events, users, items, cfg, examples_uri)
    run_transform(examples_uri, transform_dir, cfg.side_features(), os.path.join(root, "tft_tmp"))
    return TinyPipeline(examples_uri, transform_dir, cfg.side_features(), cfg.examples.history_length,
                        list(users.index), list(items.index))


def train_sequential(root: str, retrieval: dict, sequence_length: int = 0):
    """A retrieval model trained on ``sequential_tables`` (order is all there is to learn) with
    ``retrieval`` settings, user id, content and context off, selected on validation NDCG@10;
    ``sequence_length``: examples.sequence_length (needs objective sequence when longer than
    the history). Returns (the tiny pipeline, the metrics, the serving dir)."""
    from trainer.hparams import trainer_config
    from trainer.retrieval.train import train_and_export

    tiny = build_tiny_pipeline(os.path.join(root, "data"), make_tables=sequential_tables,
                               sequence_length=sequence_length)
    cfg = trainer_config({"retrieval": {**retrieval, "use_user_id": False, "use_content_features": False,
                                        "use_context": False},
                          "selection": {"retrieval_metric": "ndcg@10"}})
    serving_dir = os.path.join(root, "model", "Format-Serving")
    metrics = train_and_export(tiny.examples_uri, tiny.transform_dir, serving_dir, os.path.join(root, "run"),
                               tiny.side_features, tiny.history_length, cfg, sequence_length=sequence_length)
    return tiny, metrics, serving_dir
