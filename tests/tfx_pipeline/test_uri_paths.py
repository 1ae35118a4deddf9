"""The project's own components on a non-local filesystem: every path a ``ram://`` URI.

``ram://`` is TensorFlow's built-in in-memory filesystem, reachable only through
``tf.io.gfile`` (and TensorFlow's C++ file access), never through ``open`` / ``os`` /
``shutil``: so a component that still used local file I/O fails here, or writes a local
``ram:`` directory, which the ``ram`` fixture checks for. It stands in for gs:// / s3://
(README "Scaling out" says why no GCS emulator is used). Each test runs the component's
real code (the executor or the @component function) on real artifacts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

import serving  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from serving.fileio import copy_file, copy_tree, files_under, gfile, read_json, remove_tree, write_json
from serving.model_server.version_files import complete_versions, fingerprint, incomplete_reason, version_dirs
from trainer.artifacts import METRICS_FILE, serving_dir


@pytest.fixture
def ram(tmp_path, monkeypatch, request):
    """A fresh ``ram://`` root; the working directory is tmp_path, where a stray ``ram:`` folder would appear."""
    monkeypatch.chdir(tmp_path)
    root = f"ram://{request.node.name.replace('[', '_').replace(']', '_')}-{time.monotonic_ns()}"
    gfile.makedirs(root)
    yield root
    assert not os.path.exists(tmp_path / "ram:"), "a component wrote a local 'ram:' directory instead of ram://"
    remove_tree(root)


@pytest.fixture(scope="module")
def vocab_model(tmp_path_factory) -> str:
    from tests.support.vocab_models import save_vocab_model

    return save_vocab_model(str(tmp_path_factory.mktemp("vocab") / "v1"), 1)


def _artifact(kind, uri: str):
    artifact = kind()
    artifact.uri = uri
    gfile.makedirs(uri)  # as the TFX launcher makes every output directory
    return artifact


def test_ram_is_not_reachable_through_local_file_io(ram):
    """The premise of every test below: only tf.io.gfile sees ram://."""
    write_json(f"{ram}/x.json", {"a": 1})
    assert read_json(f"{ram}/x.json") == {"a": 1}
    with pytest.raises(FileNotFoundError):
        open(f"{ram}/x.json")
    assert not os.path.exists(f"{ram}/x.json")


def _push(model_dir: str, local_tmp, base: str, pushed_uri: str):
    from tfx_pipeline.components.atomic_pusher import AtomicPushExecutor

    model = standard_artifacts.Model()
    model.uri = str(local_tmp / "model")  # TFX's GetModelPath reads it through TFX's fileio (no ram://)
    shutil.copytree(model_dir, os.path.join(model.uri, "Format-Serving"))
    blessing = standard_artifacts.ModelBlessing()
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = pushed_uri
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))
    AtomicPushExecutor().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                            {"push_destination": proto_utils.proto_to_json(destination)})
    return pushed


def test_atomic_pusher_pushes_a_complete_version_into_a_uri_base(ram, tmp_path, vocab_model):
    base = f"{ram}/serving/m"
    # A version left half-copied by someone else (no saved_model.pb): listed, never complete.
    copy_tree(vocab_model, f"{base}/5")
    gfile.remove(f"{base}/5/saved_model.pb")
    pushed = _push(vocab_model, tmp_path, base, f"{ram}/pushed")

    version = int(pushed.get_string_custom_property("pushed_version"))
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == f"{base}/{version}"
    assert sorted(gfile.listdir(base)) == sorted(["5", str(version)])  # no .tmp- sibling left
    assert set(version_dirs(base)) == {5, version}
    assert set(complete_versions(base)) == {version}
    assert incomplete_reason(f"{base}/5") == "saved_model.pb is missing"
    assert sorted(files_under(f"{base}/{version}")) == sorted(files_under(vocab_model))
    assert gfile.exists(f"{ram}/pushed/saved_model.pb")  # TFX's archive copy, on the URI too
    loaded = tf.saved_model.load(f"{base}/{version}")  # what a server reading the bucket loads
    assert "recommend" in loaded.signatures
    # The half-copied version completes: the server's change detector sees it, and it counts.
    before = fingerprint(f"{base}/5")
    copy_file(f"{vocab_model}/saved_model.pb", f"{base}/5/saved_model.pb")
    assert fingerprint(f"{base}/5") != before
    assert set(complete_versions(base)) == {5, version}


def test_atomic_pusher_refuses_an_incomplete_model_and_leaves_nothing_under_a_uri_base(ram, tmp_path, vocab_model):
    broken = shutil.copytree(vocab_model, tmp_path / "broken")
    os.remove(broken / "assets" / "users.txt")
    base = f"{ram}/serving/m"
    with pytest.raises(RuntimeError, match=r"incomplete \(asset file\(s\) \['users.txt'\] missing"):
        _push(str(broken), tmp_path, base, f"{ram}/pushed")
    assert gfile.listdir(base) == []


def _retrieval_metrics(r100: float) -> dict:
    return {"model": {"recall@100": r100, "ndcg@10": 0.2}, "popularity": {"recall@100": 0.3},
            "als": {"recall@100": 0.2, "ndcg@10": 0.1}}


@pytest.mark.parametrize("current,blessed", [(0.45, True), (0.40, False)])
def test_model_gate_reads_metrics_and_writes_its_blessing_on_uris(ram, current, blessed):
    from tfx_pipeline.components.model_gate import ModelGate

    model = _artifact(standard_artifacts.Model, f"{ram}/model")
    base = _artifact(standard_artifacts.Model, f"{ram}/baseline_model")
    write_json(f"{model.uri}/{METRICS_FILE}", _retrieval_metrics(current))
    write_json(f"{base.uri}/{METRICS_FILE}", _retrieval_metrics(0.45))
    blessing = _artifact(standard_artifacts.ModelBlessing, f"{ram}/blessing")
    ModelGate.EXECUTOR_SPEC.executor_class._FUNCTION(
        model=model, blessing=blessing, kind="retrieval", gate_json=json.dumps({"max_recall_drop": 0.01}),
        baseline_model=base)
    assert blessing.get_int_custom_property("blessed") == int(blessed)
    name = "BLESSED" if blessed else "NOT_BLESSED"
    assert gfile.listdir(blessing.uri) == [name]
    decision = read_json(f"{blessing.uri}/{name}")
    assert decision["blessed"] is blessed and decision["has_baseline"]


def test_gate_names_the_missing_metrics_uri(ram):
    from trainer.gate import read_model_metrics

    with pytest.raises(FileNotFoundError, match=rf"{re.escape(ram)}/nothing/metrics.json: the trainer wrote no metrics"):
        read_model_metrics(f"{ram}/nothing")


def test_recommender_builder_reads_and_writes_uris(ram, tmp_path):
    from serving import names
    from tests.support.client_models import save_models
    from tfx_pipeline.components.recommender_builder import RecommenderBuilder

    save_models(str(tmp_path / "parts"))
    parts = {"retrieval": str(tmp_path / "parts" / names.RETRIEVAL_MODEL / "1"),
             "ranking": str(tmp_path / "parts" / names.RANKING_MODEL / "1")}

    def model(name: str, part: str | None = None):
        artifact = _artifact(standard_artifacts.Model, f"{ram}/{name}")
        if part:
            copy_tree(parts[part], serving_dir(artifact.uri))
        return artifact

    def blessing(name: str, blessed: int | None = None):
        artifact = _artifact(standard_artifacts.ModelBlessing, f"{ram}/{name}")
        if blessed is not None:
            artifact.set_int_custom_property("blessed", blessed)
        return artifact

    scann = model("scann", "retrieval")
    write_json(f"{scann.uri}/{METRICS_FILE}", {"model": {"recall@100": 0.5}})
    out = {"recommender": model("recommender"), "recommender_brute_force": model("recommender_brute_force"),
           "blessing": blessing("blessing")}
    RecommenderBuilder.EXECUTOR_SPEC.executor_class._FUNCTION(
        scann_model=scann, brute_force_model=model("brute_force", "retrieval"), ranking_model=model("ranking", "ranking"),
        retrieval_blessing=blessing("retrieval_blessing", 1), ranking_blessing=blessing("ranking_blessing", 1),
        num_candidates=7, **out)
    assert read_json(f"{out['blessing'].uri}/BLESSED")["blessed"] is True
    assert read_json(f"{out['recommender'].uri}/{METRICS_FILE}") == {"model": {"recall@100": 0.5}}
    assert not gfile.exists(f"{out['recommender_brute_force'].uri}/{METRICS_FILE}")  # its retrieval part had none
    for name in ("recommender", "recommender_brute_force"):
        assert incomplete_reason(serving_dir(out[name].uri)) is None, name
        assert names.RECOMMEND_SIGNATURE in tf.saved_model.load(serving_dir(out[name].uri)).signatures


def test_infra_validator_serves_a_model_read_from_a_uri(ram, vocab_model):
    from tfx_pipeline.components.infra_validator import InfraValidator

    model = _artifact(standard_artifacts.Model, f"{ram}/model")
    copy_tree(vocab_model, serving_dir(model.uri))
    blessing = _artifact(standard_artifacts.ModelBlessing, f"{ram}/blessing")
    blessing.set_int_custom_property("blessed", 1)
    infra = _artifact(standard_artifacts.InfraBlessing, f"{ram}/infra_blessing")
    InfraValidator.EXECUTOR_SPEC.executor_class._FUNCTION(model=model, blessing=blessing, infra_blessing=infra,
                                                          model_name="m")
    assert infra.get_int_custom_property("blessed") == 1, gfile.listdir(infra.uri)
    report = read_json(f"{infra.uri}/INFRA_BLESSED")
    assert report["model_dir"] == serving_dir(model.uri)
    assert report["requests_sent"] == report["requests_ok"] > 0


def test_infra_validator_records_a_failure_on_a_uri(ram, vocab_model):
    from tfx_pipeline.components.infra_validator import InfraValidator

    model = _artifact(standard_artifacts.Model, f"{ram}/model")
    copy_tree(vocab_model, serving_dir(model.uri))
    gfile.remove(f"{serving_dir(model.uri)}/assets/users.txt")
    blessing = _artifact(standard_artifacts.ModelBlessing, f"{ram}/blessing")
    blessing.set_int_custom_property("blessed", 1)
    infra = _artifact(standard_artifacts.InfraBlessing, f"{ram}/infra_blessing")
    InfraValidator.EXECUTOR_SPEC.executor_class._FUNCTION(model=model, blessing=blessing, infra_blessing=infra,
                                                          model_name="m")
    assert infra.get_int_custom_property("blessed") == 0
    with gfile.GFile(f"{infra.uri}/INFRA_NOT_BLESSED") as fh:
        assert "incomplete SavedModel (asset file(s) ['users.txt'] missing" in fh.read()


def _split_stats(root: str, frames: dict) -> tuple[str, str, str]:
    """Statistics, empty anomalies and a schema on ``root``, laid out as StatisticsGen / ExampleValidator do."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from tfx_pipeline.data.validation import ANOMALIES_FILE, STATS_FILE
    from trainer.artifacts import split_dir

    stats_uri, anomalies_uri = f"{root}/stats", f"{root}/anomalies"
    for split, frame in frames.items():
        gfile.makedirs(split_dir(stats_uri, split))
        with gfile.GFile(f"{split_dir(stats_uri, split)}/{STATS_FILE}", "wb") as fh:
            fh.write(tfdv.generate_statistics_from_dataframe(frame).SerializeToString())
        gfile.makedirs(split_dir(anomalies_uri, split))
        with gfile.GFile(f"{split_dir(anomalies_uri, split)}/{ANOMALIES_FILE}", "wb") as fh:
            fh.write(anomalies_pb2.Anomalies().SerializeToString())
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(next(iter(frames.values()))))
    gfile.makedirs(f"{root}/schema")
    tfdv.write_schema_text(schema, f"{root}/schema/schema.pbtxt")
    return stats_uri, f"{root}/schema", anomalies_uri


def test_data_gate_reads_artifacts_and_keeps_its_baseline_and_reports_on_uris(ram):
    import numpy as np
    import pandas as pd

    from tfx_pipeline.config import ValidationConfig
    from tfx_pipeline.data.validation import REPORT_FILE, STATS_FILE, DataValidationError, check_data
    from trainer.artifacts import EVAL, TRAIN

    rng = np.random.default_rng(0)

    def frame(shift: float):
        return pd.DataFrame({"x": (shift + rng.normal(size=1000)).astype(np.float32),
                             "c": rng.choice(["a", "b", "c"], 1000)})

    def run(name: str, shift: float) -> dict:
        stats, schema, anomalies = _split_stats(f"{ram}/{name}", {TRAIN: frame(shift), EVAL: frame(shift)})
        gfile.makedirs(f"{ram}/{name}/report")
        return check_data(stats, schema, anomalies, ValidationConfig(), f"{ram}/root/drift_baseline",
                          f"{ram}/{name}/report", last_report_path=f"{ram}/root/last.json")

    first = run("run1", 0.0)
    assert first["findings"] == [] and first["drift_vs_previous_run"] == {}
    assert gfile.exists(f"{ram}/root/drift_baseline/{STATS_FILE}")  # the clean run's train statistics
    assert read_json(f"{ram}/run1/report/{REPORT_FILE}") == read_json(f"{ram}/root/last.json") == first
    with pytest.raises(DataValidationError, match=rf"(?s)\[drift vs previous run\] feature 'x'.*"
                                                  rf"\(report: {re.escape(ram)}/root/last.json\)"):
        run("run2", 5.0)  # read against the baseline on ram://
    assert read_json(f"{ram}/root/last.json")["drift_vs_previous_run"]
