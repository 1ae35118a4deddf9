"""Reading raw example splits (tf.Example TFRecords, GZIP) for training and export."""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf

from trainer import features as F
from trainer.artifacts import split_dir
from trainer.model_inputs import FeatureLayout, to_model_inputs


def split_files(examples_uri: str, split: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(split_dir(examples_uri, split), "*")))
    if not files:
        raise FileNotFoundError(f"no files for split {split!r} under {examples_uri}")
    return files


def examples_root(file_pattern) -> str:
    """The Examples artifact URI from a Trainer split file pattern (<uri>/Split-train/*)."""
    first = file_pattern[0] if isinstance(file_pattern, (list, tuple)) else file_pattern
    return os.path.dirname(os.path.dirname(first))


def raw_batches(files, spec: dict, batch_size: int = 4096) -> tf.data.Dataset:
    return (tf.data.TFRecordDataset(files, compression_type="GZIP")
            .batch(batch_size)
            .map(lambda b: tf.io.parse_example(b, spec), num_parallel_calls=tf.data.AUTOTUNE))


def read_numpy(files, spec: dict) -> dict[str, np.ndarray]:
    """A split as numpy: scalars [N]; variable-length features [N, L] padded with b"" / 0."""
    return to_numpy(raw_batches(files, spec), spec)


def to_numpy(batches, keys) -> dict[str, np.ndarray]:
    """Batches of raw features (dense or sparse) -> numpy, as ``read_numpy``."""
    parts: dict[str, list] = {k: [] for k in keys}
    for batch in batches:
        for key, value in batch.items():
            if isinstance(value, tf.SparseTensor):
                default = b"" if value.dtype == tf.string else 0
                value = tf.sparse.to_dense(value, default_value=default)
                parts[key].append(value.numpy())
            else:
                parts[key].append(np.reshape(value.numpy(), [-1]))
    out = {}
    for key, chunks in parts.items():
        if chunks and chunks[0].ndim == 2:
            width = max(c.shape[1] for c in chunks)
            pad = b"" if chunks[0].dtype == object else 0
            chunks = [np.pad(c, [(0, 0), (0, width - c.shape[1])], constant_values=pad) for c in chunks]
        out[key] = np.concatenate(chunks) if chunks else np.array([])
    return out


def read_split(files, spec: dict, tft_layer, layout: FeatureLayout, raw_keys=()) -> tuple[tf.data.Dataset, dict]:
    """One pass over a split's files: (transformed rows, cached in memory; the ``raw_keys`` columns as numpy).

    The rows are the model inputs of ``transformed_rows``, in file order; the raw columns
    come from the same parsed batches, so the files are read once.
    """
    keys = tuple(raw_keys)
    if not keys:
        return transformed_rows(files, spec, tft_layer, layout), {}
    pairs = (raw_batches(files, spec)
             .map(lambda raw: (to_model_inputs(tft_layer(raw), layout), {k: raw[k] for k in keys}))
             .cache())
    raw = to_numpy(pairs.map(lambda rows, cols: cols), keys)  # this pass fills the cache
    return pairs.map(lambda rows, cols: rows).unbatch(), raw


def transformed_rows(files, spec: dict, tft_layer, layout: FeatureLayout) -> tf.data.Dataset:
    """Unbatched model-input rows of a raw split, transformed once and cached in memory."""
    return (raw_batches(files, spec)
            .map(lambda raw: to_model_inputs(tft_layer(raw), layout))
            .unbatch()
            .cache())


def batched(rows: tf.data.Dataset, batch_size: int, shuffle: bool, seed: int, map_fn=None) -> tf.data.Dataset:
    """Batches of ``batch_size`` rows (the global batch: per replica x replicas); training
    batches (``shuffle``) are shuffled with ``seed`` and drop the remainder.

    Sharded by DATA under multi-worker training (trainer/distribute.py): every worker reads the
    same rows, shuffled alike (same seed), and keeps its share of each batch. Sharding by FILE
    would not split them: the rows are cached in memory, carved by position (the validation
    split) and zipped with in-memory columns, and a split may be a single file.
    """
    ds = rows
    if shuffle:
        ds = ds.shuffle(100_000, seed=seed, reshuffle_each_iteration=True)
    ds = ds.padded_batch(batch_size, drop_remainder=shuffle)
    if map_fn is not None:
        ds = ds.map(map_fn)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(2).with_options(options)


def subset_spec(spec: dict, keys) -> dict:
    keys = set(keys)
    return {k: v for k, v in spec.items() if k in keys}


def item_keys(spec: dict) -> list[str]:
    return [k for k in spec if k == F.ITEM_ID or k.startswith(F.ITEM_FEATURE_PREFIX)]


def user_state_keys(spec: dict) -> list[str]:
    return [k for k in spec if k in (F.USER_ID, F.HISTORY_ITEM_IDS) or k.startswith(F.USER_FEATURE_PREFIX)]
