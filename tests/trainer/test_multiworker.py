"""Multi-worker training (trainer/distribute.py): TF_CONFIG parsing, ``is_chief``, the non-chief
workers' temporary output directories, and a real run of the retrieval then the ranking trainer
by two worker processes on loopback under MultiWorkerMirroredStrategy (CPU, collectives over gRPC)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

import trainer  # noqa: F401  (Keras 2 before TensorFlow)
from trainer.distribute import ClusterTask, cluster_task, is_chief, output_dirs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(cluster: dict, task: dict | None = None) -> str:
    return json.dumps({"cluster": cluster, **({"task": task} if task is not None else {})})


TWO_WORKERS = {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}
CHIEF_AND_WORKER = {"chief": ["127.0.0.1:2000"], "worker": ["127.0.0.1:2001"]}


# --- TF_CONFIG parsing and is_chief (no training) -------------------------------------------

def test_no_tf_config_is_a_single_process_and_its_own_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_task() is None and is_chief()
    assert cluster_task("") is None and cluster_task("  ") is None
    assert cluster_task(_config({})) is None  # an empty cluster: local training


@pytest.mark.parametrize("tf_config, expected, chief", [
    (_config({"worker": ["h:1"]}, {"type": "worker", "index": 0}), ClusterTask("worker", 0, 1, False), True),
    (_config({"chief": ["h:1"]}, {"type": "chief", "index": 0}), ClusterTask("chief", 0, 1, True), True),
    (_config(TWO_WORKERS, {"type": "worker", "index": 0}), ClusterTask("worker", 0, 2, False), True),
    (_config(TWO_WORKERS, {"type": "worker", "index": 1}), ClusterTask("worker", 1, 2, False), False),
    (_config(CHIEF_AND_WORKER, {"type": "chief", "index": 0}), ClusterTask("chief", 0, 2, True), True),
    # With a chief entry, worker 0 is not the chief.
    (_config(CHIEF_AND_WORKER, {"type": "worker", "index": 0}), ClusterTask("worker", 0, 2, True), False),
])
def test_cluster_task_and_is_chief(tf_config, expected, chief, monkeypatch):
    assert cluster_task(tf_config) == expected
    assert is_chief(tf_config) is chief
    monkeypatch.setenv("TF_CONFIG", tf_config)  # the environment variable by default
    assert cluster_task() == expected and is_chief() is chief


@pytest.mark.parametrize("tf_config, problem", [
    ("{not json", r"not valid JSON"),
    ("[1, 2]", r"must be a JSON object"),
    (_config(TWO_WORKERS), r"missing or incomplete \"task\""),
    (_config(TWO_WORKERS, {"type": "worker"}), r"missing or incomplete \"task\""),
    (_config(TWO_WORKERS, {"type": "worker", "index": 2}), r"task index 2 is out of range.*2 'worker' task"),
    (_config(TWO_WORKERS, {"type": "worker", "index": -1}), r"task index -1 is out of range"),
    (_config(TWO_WORKERS, {"type": "worker", "index": "1"}), r"task index must be an integer"),
    (_config(TWO_WORKERS, {"type": "chief", "index": 0}), r"task type 'chief' is not in the cluster"),
    (_config({**TWO_WORKERS, "ps": ["h:3"]}, {"type": "worker", "index": 0}), r"\['ps'\] task.*no parameter servers"),
    (_config({"worker": "h:1,h:2"}, {"type": "worker", "index": 0}), r"cluster\['worker'\] must be a list"),
    (_config({"chief": ["h:1", "h:2"]}, {"type": "chief", "index": 0}), r"at most one chief"),
])
def test_malformed_tf_config_is_a_clear_value_error(tf_config, problem, monkeypatch):
    with pytest.raises(ValueError, match=r"^TF_CONFIG.*" + problem):
        cluster_task(tf_config)
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=r"^TF_CONFIG.*" + problem):
        is_chief()


def test_output_dirs_are_the_real_ones_on_the_chief_and_a_deleted_copy_elsewhere(monkeypatch, tmp_path):
    serving, run = str(tmp_path / "model" / "Format-Serving"), str(tmp_path / "run")
    monkeypatch.setenv("TF_CONFIG", _config(TWO_WORKERS, {"type": "worker", "index": 0}))
    with output_dirs(serving, run, None) as dirs:
        assert dirs == (serving, run, None)
    monkeypatch.setenv("TF_CONFIG", _config(TWO_WORKERS, {"type": "worker", "index": 1}))
    with output_dirs(serving, run, None) as (s, r, log_dir):
        assert log_dir is None and not s.startswith(str(tmp_path)) and not r.startswith(str(tmp_path))
        assert os.path.basename(s) == "Format-Serving" and os.path.basename(r) == "run"
        scratch = os.path.dirname(os.path.dirname(s))
        assert scratch == os.path.dirname(os.path.dirname(r))  # one temporary directory
        os.makedirs(s)
        open(os.path.join(os.path.dirname(s), "metrics.json"), "w").close()  # the Model dir: the parent
    assert not os.path.exists(scratch) and not os.path.exists(tmp_path / "model") and not os.path.exists(run)


# --- two worker processes on loopback ----------------------------------------------------------

# Small and quick: 2 epochs of each model (retrieval: the mean encoder), no validation split (so
# no refit), no beyond-accuracy evaluation. Each worker's batch is 32 rows: a step is 64 rows over
# the two. The ranking model has no dropout (neither of its layers nor of the context), so its
# training is deterministic and a single worker on batches of 64 rows takes the same steps.
RANKING_CFG = {"epochs": 2, "batch_size": 32, "learning_rate": 0.01, "embedding_dim": 8, "deep_units": [16],
               "num_cross_layers": 1, "dropout": 0.0, "context_dropout": 0.0}
TRAINER_CFG = {
    "retrieval": {"epochs": 2, "batch_size": 32, "embedding_dim": 8, "max_k": 20, "history_encoder": "mean"},
    "ranking": RANKING_CFG,
    "selection": {"validation": False},
    "evaluation": {"enabled": False},
    "baseline": {"iterations": 1},
}
KINDS = ("retrieval", "ranking")  # each worker process trains both, in this order
# A safety net against a hung collective, not a budget: measured on 2 cores that other jobs loaded
# about 3x over, the workers took 5 minutes (retrieval alone, 2.3): most of it importing TensorFlow,
# tracing the train steps and saving the exports; about 70 s of it training and exporting ranking.
WORKER_TIMEOUT_S = 600


def _outputs(root) -> dict:
    return {"serving_dir": str(root / "model" / "Format-Serving"), "run_dir": str(root / "run"),
            "log_dir": str(root / "run" / "logs")}


def _files(root) -> set[str]:
    """Every file under ``root``, relative; the TensorBoard logs left out (their names hold host, pid, time)."""
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
            if os.path.join("run", "logs") not in os.path.relpath(d, root)}


def signature_interface(export_dir: str) -> dict:
    """{signature: ({input key: (dtype, encoding, shape)}, {output key: ...})} from saved_model.pb
    (a composite tensor, e.g. a ragged input, has no dtype of its own: its type spec instead)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as fh:
        sm = saved_model_pb2.SavedModel.FromString(fh.read())

    def tensors(infos) -> dict:
        return {k: (types_pb2.DataType.Name(v.dtype) if v.dtype else str(v.composite_tensor.type_spec),
                    v.WhichOneof("encoding"), tuple(-1 if d.size < 0 else d.size for d in v.tensor_shape.dim))
                for k, v in infos.items()}

    return {name: (tensors(sig.inputs), tensors(sig.outputs))
            for name, sig in sm.meta_graphs[0].signature_def.items() if not name.startswith("__")}


def _start_workers(tiny, roots, logs) -> list[subprocess.Popen]:
    from tests.support.multiworker import free_ports, tf_config

    ports = free_ports(len(roots))
    procs = []
    for index, (root, log_path) in enumerate(zip(roots, logs)):
        args = json.dumps({"examples_uri": tiny.examples_uri, "transform_dir": tiny.transform_dir,
                           "side_features": tiny.side_features, "history_length": tiny.history_length,
                           "trainer": TRAINER_CFG, "kinds": list(KINDS),
                           "outputs": {kind: _outputs(root / kind) for kind in KINDS}})
        env = {**os.environ, "TF_CONFIG": tf_config(ports, index), "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "tests.support.multiworker", args], cwd=REPO,
                                          env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, logs, timeout_s: float) -> list[int]:
    """Waits for every worker; when one fails (or time runs out) the others are stopped: a worker
    whose peer is gone would wait for its collectives until gRPC gives up."""
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs):
        failed = any(p.returncode not in (None, 0) for p in procs)
        if failed or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            tails = "\n".join(f"--- worker {i} (rc {p.returncode}) ---\n{open(log).read()[-3000:]}"
                              for i, (p, log) in enumerate(zip(procs, logs)))
            pytest.fail(("a worker failed" if failed else f"the workers ran past {timeout_s:.0f} s") + "\n" + tails)
        time.sleep(0.5)
    return [p.returncode for p in procs]


def test_two_workers_train_retrieval_then_ranking_and_only_the_chief_writes(tiny_pipeline, tmp_path, monkeypatch):
    import tensorflow as tf

    from trainer import artifacts, raw_data
    from trainer.hparams import trainer_config
    from trainer.ranking.train import train_and_export as train_ranking
    from trainer.retrieval.train import train_and_export as train_retrieval

    chief_root, other_root, single_root = tmp_path / "chief", tmp_path / "worker1", tmp_path / "single"
    # Each worker is given its own output paths, so whatever the non-chief writes where it was
    # told to is seen (in a real cluster every worker gets the same ones).
    logs = [str(tmp_path / "worker0.log"), str(tmp_path / "worker1.log")]
    started = time.monotonic()
    procs = _start_workers(tiny_pipeline, [chief_root, other_root], logs)
    try:
        # Meanwhile, the same trainings in this process, without TF_CONFIG: the single-worker reference.
        # Ranking on the workers' global batch (2 x 32 rows), so it takes the same steps as they do.
        monkeypatch.delenv("TF_CONFIG", raising=False)
        single_cfg = {**TRAINER_CFG, "ranking": {**RANKING_CFG, "batch_size": 2 * RANKING_CFG["batch_size"]}}
        for kind, train_and_export in (("retrieval", train_retrieval), ("ranking", train_ranking)):
            out = _outputs(single_root / kind)
            train_and_export(tiny_pipeline.examples_uri, tiny_pipeline.transform_dir, out["serving_dir"],
                             out["run_dir"], tiny_pipeline.side_features, tiny_pipeline.history_length,
                             trainer_config(single_cfg), log_dir=out["log_dir"])
    finally:
        codes = _wait(procs, logs, WORKER_TIMEOUT_S - (time.monotonic() - started))
    stdout = [open(log).read() for log in logs]

    # (a) Both workers finished both trainings, as two replicas of one MultiWorkerMirroredStrategy.
    assert codes == [0, 0], stdout
    for index, text in enumerate(stdout):
        assert re.findall(r"^(?:trained (\w+) |done )worker:(\d)", text, re.M) == [
            ("retrieval", str(index)), ("ranking", str(index)), ("", str(index))], text[-3000:]
        assert text.count("MultiWorkerMirroredStrategy with 2 replica(s) in sync") == len(KINDS), text[-3000:]
        # The gradient-norm probe runs in a tf.function, not strategy.run called eagerly every epoch.
        assert "significant overhead" not in text, text[-3000:]
    # Each step is one global batch of 64 rows split between the workers (sharded by DATA):
    # an epoch is the train rows // 64 steps, not twice that (each worker going over every row).
    rows = sum(1 for _ in tf.data.TFRecordDataset(raw_data.split_files(tiny_pipeline.examples_uri, artifacts.TRAIN),
                                                  compression_type="GZIP"))
    steps = [int(done) for done, total in re.findall(r"^(\d+)/(\d+) - ", stdout[0], re.M) if done == total]
    assert steps == [rows // 64] * sum(TRAINER_CFG[kind]["epochs"] for kind in KINDS), (rows, steps)

    # (b) The chief exported what a single worker exports: the same files and the same serving interface.
    for kind in KINDS:
        chief, single = _outputs(chief_root / kind), _outputs(single_root / kind)
        interface = signature_interface(chief["serving_dir"])
        assert "serving_default" in interface and all(inputs and outputs for inputs, outputs in interface.values())
        assert interface == signature_interface(single["serving_dir"]), kind
        assert _files(chief_root / kind) == _files(single_root / kind), kind
        assert {"saved_model.pb", artifacts.METRICS_FILE} <= {os.path.basename(f) for f in _files(chief_root / kind)}
        assert os.listdir(chief["log_dir"])  # TensorBoard: the chief's logs
    metrics = {(who, kind): json.load(open(os.path.join(_outputs(root / kind)["run_dir"], artifacts.METRICS_FILE)))
               for who, root in (("chief", chief_root), ("single", single_root)) for kind in KINDS}
    assert metrics["chief", "retrieval"]["model"]["recall@100"] > 0

    # (c) Ranking, a mean loss over the global batch: the two workers' steps on 2 x 32 rows are the
    # single worker's on 64 (same data order, same initial weights, no dropout), so its losses and
    # its eval metrics match, up to float summation order; and the per-example loss is exact.
    history = {who: json.load(open(os.path.join(_outputs(root / "ranking")["run_dir"], artifacts.HISTORY_FILE)))
               for who, root in (("chief", chief_root), ("single", single_root))}
    scale = history["chief"]["loss_scale"]
    assert (scale["replicas"], scale["train_batch_rows"], scale["per_example"]) == (2, 64, "exact"), scale
    assert "mean over the global batch's rows" in scale["how"], scale
    assert history["single"]["loss_scale"]["replicas"] == 1
    assert history["chief"]["loss_per_example"] == pytest.approx(history["single"]["loss_per_example"], rel=1e-4)
    assert history["chief"]["grad_norm"] == pytest.approx(history["single"]["grad_norm"], rel=1e-4)
    # Keras' metrics are logged once, not summed over the workers (trainer/ranking/model.py ``_global_logs``).
    for key in ("rmse", "auc", "loss"):
        assert history["chief"][key] == pytest.approx(history["single"][key], rel=1e-4), key
    chief_m, single_m = metrics["chief", "ranking"]["model"], metrics["single", "ranking"]["model"]
    assert chief_m == pytest.approx(single_m, rel=1e-4), (chief_m, single_m)
    assert chief_m["rmse"] < metrics["chief", "ranking"]["baseline"]["rmse"], metrics["chief", "ranking"]

    # (d) The non-chief wrote only into its temporary copies (one per training), now deleted;
    # nothing where it was told to write.
    scratch = re.findall(r"writing this run's outputs into (\S+) \(deleted afterwards\)", stdout[1])
    assert len(scratch) == len(KINDS), stdout[1][-3000:]
    assert not any(os.path.exists(d) for d in scratch)
    assert not os.path.exists(other_root), sorted(_files(other_root))
    assert "is not the chief" not in stdout[0]
