"""The data half under Beam's DirectRunner with two worker processes gives the in-memory run's outputs.

``--direct_running_mode=multi_processing --direct_num_workers=2`` (what ``--beam-arg`` passes)
runs every Beam step's work in separate ``sdk_worker_main`` processes: nothing they run may
rely on the launcher's memory (the closest this machine comes to a distributed runner;
../shared/stack/STACK.md). A tiny generated log with a user and an item table (one feature of
every kind), so the example builder's per-user work carries the side tables to the workers.
"""

import glob
import os

import pytest

from tests.support.beam_workers import WorkerWatch
from tests.support.pipeline_configs import implicit_with_side_tables
from tfx_pipeline.local_runner import run_local

pytestmark = pytest.mark.e2e

MULTI_PROCESS_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
BEAM_STEPS = ("ExampleBuilder", "StatisticsGen", "Transform")


def _examples(uri: str) -> dict[str, list[bytes]]:
    """Split -> its tf.Examples, each re-serialized deterministically, sorted (shards and the
    order of a proto map's entries differ between runs; the examples must not)."""
    import tensorflow as tf

    out = {}
    for split_dir in sorted(glob.glob(os.path.join(uri, "Split-*"))):
        records = tf.data.TFRecordDataset(sorted(glob.glob(os.path.join(split_dir, "*"))), compression_type="GZIP")
        out[os.path.basename(split_dir)] = sorted(
            tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True) for r in records)
    return out


def _vocabularies(transform_graph_uri: str) -> dict[str, bytes]:
    assets = os.path.join(transform_graph_uri, "transform_fn", "assets")
    return {name: open(os.path.join(assets, name), "rb").read() for name in sorted(os.listdir(assets))}


def _num_examples(statistics_uri: str) -> dict[str, int]:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    out = {}
    for path in glob.glob(os.path.join(statistics_uri, "Split-*", "FeatureStats.pb")):
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(open(path, "rb").read())
        out[os.path.basename(os.path.dirname(path))] = stats.datasets[0].num_examples
    return out


def _outputs(rows: list[dict]) -> dict[str, dict[str, str]]:
    return {r["component"]: r["outputs"] for r in rows}


def test_data_half_with_two_worker_processes_matches_in_memory(tmp_path):
    in_memory = _outputs(run_local(implicit_with_side_tables(tmp_path / "in_memory"), stage="data"))
    with WorkerWatch() as watch:
        rows = run_local(implicit_with_side_tables(tmp_path / "workers"), stage="data",
                         beam_pipeline_args=MULTI_PROCESS_ARGS)
    assert all(r["state"] == "COMPLETE" for r in rows), rows
    # Each Beam step's work ran in two worker processes of its own, not in the launcher.
    by_step = {r["component"]: watch.between(r["start"] - 1, r["end"] + 1) for r in rows}
    for step in BEAM_STEPS:
        assert len(by_step[step]) >= 2, (
            f"{step} started {len(by_step[step])} Beam SDK worker process(es), expected 2: the DirectRunner did "
            f"not run it in multi_processing mode (workers seen per step: {by_step})")
    workers = _outputs(rows)

    mem_examples = _examples(in_memory["ExampleBuilder"]["examples"])
    assert {k: len(v) for k, v in _examples(workers["ExampleBuilder"]["examples"]).items()} == {
        k: len(v) for k, v in mem_examples.items()}
    assert _examples(workers["ExampleBuilder"]["examples"]) == mem_examples
    assert set(mem_examples) == {"Split-train", "Split-eval", "Split-items", "Split-users"}
    assert (_num_examples(workers["StatisticsGen"]["statistics"])
            == _num_examples(in_memory["StatisticsGen"]["statistics"]))
    vocabularies = _vocabularies(workers["Transform"]["transform_graph"])
    # user and item ids, and the categorical, text and multi-valued side features
    assert {"user_tier", "item_brand", "item_title", "item_tags"} <= set(vocabularies), sorted(vocabularies)
    assert vocabularies == _vocabularies(in_memory["Transform"]["transform_graph"])
