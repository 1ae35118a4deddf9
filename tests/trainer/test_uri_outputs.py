"""The trainer's outputs, IndexBuilder and the report writer with every path a ``ram://`` URI.

``ram://`` is TensorFlow's in-memory filesystem: only ``tf.io.gfile`` reaches it, so local
file I/O (``open``, ``os.makedirs``, ``np.save``) on these paths fails, or writes a local
``ram:`` folder, which the fixture checks for (the working directory is a temporary one).
It stands in for gs:// / s3:// (README "Scaling out"). Real code throughout: the tiny
pipeline's retrieval training (skeleton's outputs, the warm-start state, TensorBoard logs),
then the IndexBuilder component's function, then ``write_report``.
"""

from __future__ import annotations

import json
import os
import time

import pytest

import serving  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from serving.fileio import gfile, load_npy, read_json, read_text, remove_tree
from trainer import artifacts

pytestmark = pytest.mark.e2e  # a chain of real components: trains a model (about 100 s here)

RETRIEVAL = {"retrieval": {"epochs": 2, "batch_size": 64}, "evaluation": {"min_group_users": 2},
             "index": {"recall_floor": 0.5}}


@pytest.fixture(scope="module")
def ram(tmp_path_factory):
    cwd = os.getcwd()
    workdir = tmp_path_factory.mktemp("cwd")
    os.chdir(workdir)  # a local "ram:" folder made by open/os would land here
    root = f"ram://trainer-outputs-{time.monotonic_ns()}"
    gfile.makedirs(root)
    try:
        yield root
        assert not os.path.exists(workdir / "ram:"), "local file I/O wrote a 'ram:' folder instead of ram://"
    finally:
        os.chdir(cwd)
        remove_tree(root)


@pytest.fixture(scope="module")
def trained(ram, tiny_pipeline):
    from trainer.hparams import trainer_config
    from trainer.retrieval.train import train_and_export

    examples, transform, side, hist = tiny_pipeline
    metrics = train_and_export(examples, transform, f"{ram}/model/Format-Serving", f"{ram}/run", side, hist,
                               trainer_config(RETRIEVAL), log_dir=f"{ram}/run/logs")
    return metrics


def test_training_writes_its_model_metrics_state_and_logs_to_a_uri(ram, trained):
    from trainer.warm_start import INDEX_FILE, VARIABLES_FILE, state_dir_of

    model, run = f"{ram}/model", f"{ram}/run"
    assert gfile.exists(f"{model}/Format-Serving/{artifacts.SAVED_MODEL_FILE}")
    assert read_json(f"{model}/{artifacts.METRICS_FILE}") == read_json(f"{run}/{artifacts.METRICS_FILE}")
    assert read_json(f"{run}/{artifacts.METRICS_FILE}")["model"]["recall@100"] == trained["model"]["recall@100"]
    assert len(read_json(f"{run}/{artifacts.HISTORY_FILE}")["loss"]) >= 1
    assert load_npy(f"{run}/{artifacts.CANDIDATE_NORMS_FILE}").ndim == 2
    queries = load_npy(f"{run}/{artifacts.EVAL_QUERIES_FILE}")  # an np.ndarray run file, np.save's format
    assert queries.ndim == 2 and len(queries) > 0
    state = state_dir_of(f"{model}/Format-Serving")
    assert state == f"{model}/{artifacts.WARM_START_DIR}"
    assert read_json(f"{state}/{INDEX_FILE}")["variables"]
    assert len(load_npy(f"{state}/{VARIABLES_FILE}").files) == len(read_json(f"{state}/{INDEX_FILE}")["variables"])
    events = [f for _, _, files in gfile.walk(f"{run}/logs") for f in files if "tfevents" in f]
    assert events, "no TensorBoard event file under the URI log dir"


@pytest.fixture(scope="module")
def indexed(ram, trained):
    from tfx.types import standard_artifacts

    from tfx_pipeline.components.index_builder import IndexBuilder

    def artifact(kind, uri):
        a = kind()
        a.uri = uri
        gfile.makedirs(uri)
        return a

    scann = artifact(standard_artifacts.Model, f"{ram}/scann")
    IndexBuilder.EXECUTOR_SPEC.executor_class._FUNCTION(
        model=artifact(standard_artifacts.Model, f"{ram}/model"),
        model_run=artifact(standard_artifacts.ModelRun, f"{ram}/run"),
        scann_model=scann, trainer_json=json.dumps(RETRIEVAL))
    return scann.uri


def test_index_builder_reads_and_writes_uris(ram, indexed):
    from serving import names
    from serving.model_server.version_files import incomplete_reason
    from trainer.retrieval.index import INDEX_REPORT

    export = artifacts.serving_dir(indexed)
    assert incomplete_reason(export) is None
    assert gfile.exists(f"{export}/{names.WARMUP_DIR}/{names.WARMUP_FILE}")  # copied from the brute-force export
    assert read_json(f"{indexed}/{INDEX_REPORT}")["recall@10"] >= 0.5
    assert read_json(f"{indexed}/{artifacts.METRICS_FILE}") == read_json(f"{ram}/model/{artifacts.METRICS_FILE}")


def test_report_reads_runs_and_writes_the_report_on_uris(ram, indexed):
    from trainer.report import write_report
    from trainer.retrieval.index import INDEX_REPORT

    out = f"{ram}/report"
    path = write_report(out, f"{ram}/run", None, f"{indexed}/{INDEX_REPORT}")
    assert path == f"{out}/report.md"
    md = read_text(path)
    assert "## retrieval" in md and "## ScaNN index" in md
    for png in ("retrieval_curves.png", "retrieval_norms.png"):  # the norms plot reads candidate_norms.npy
        assert f"({png})" in md and gfile.exists(f"{out}/{png}"), png
    html = read_text(f"{out}/report.html")
    assert "data:image/png;base64," in html and "plot missing" not in html  # the PNG read back from ram://
    assert f"<code>{out}</code>" in html  # the report directory, kept a URI
