"""Device placement, multi-worker training and numeric precision.

MirroredStrategy across visible GPUs, the default strategy on CPU; when ``TF_CONFIG`` names
more than one worker (how Vertex AI Training or a Kubeflow TFJob starts the trainer's
processes), MultiWorkerMirroredStrategy over all of them (``choose_strategy``). Under it every
worker fits and saves, but only the chief (``is_chief``) writes into the run's real
directories; the others write into a temporary copy that is deleted (``output_dirs``). The Keras dtype
policy (mixed precision) is chosen per model from its hyper-parameters and applied only
while that model is built (``precision_scope``): Keras layers capture the global policy
when they are constructed, so scoping the build is enough, and a second trainer in the
same process (the ranking model after retrieval) never inherits the first one's policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile

import tensorflow as tf

from trainer.training_logs import log


TF_CONFIG = "TF_CONFIG"
TRAINING_JOBS = ("chief", "worker")  # the task types that train under MultiWorkerMirroredStrategy


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's place in the cluster ``TF_CONFIG`` describes."""

    task_type: str  # "chief" | "worker"
    index: int
    workers: int  # the training processes: chief + worker tasks
    has_chief: bool

    @property
    def is_chief(self) -> bool:
        """TF's convention: the "chief" task; without one, worker 0; a lone worker is its own chief."""
        if self.workers <= 1 or self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.index == 0 and not self.has_chief

    def __str__(self) -> str:
        return f"{self.task_type}:{self.index}"


def cluster_task(tf_config: str | None = None) -> ClusterTask | None:
    """Parses ``tf_config`` (default: the ``TF_CONFIG`` environment variable); None when it is
    unset, empty or names no cluster. Raises ValueError, naming TF_CONFIG, when it is malformed."""
    raw = os.environ.get(TF_CONFIG, "") if tf_config is None else tf_config
    if not raw.strip():
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{TF_CONFIG} is not valid JSON ({e}): {raw[:200]!r}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{TF_CONFIG} must be a JSON object with \"cluster\" and \"task\", got {raw[:200]!r}")
    cluster = config.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise ValueError(f"{TF_CONFIG}: \"cluster\" must map task types to address lists, got {cluster!r}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and a for a in addresses):
            raise ValueError(f"{TF_CONFIG}: cluster[{job!r}] must be a list of \"host:port\" strings, "
                             f"got {addresses!r}")
    cluster = {job: addresses for job, addresses in cluster.items() if addresses}
    if not cluster:
        return None
    others = sorted(set(cluster) - set(TRAINING_JOBS))
    if others:
        raise ValueError(f"{TF_CONFIG}: the cluster has {others} task(s); the trainers run only "
                         f"MultiWorkerMirroredStrategy, whose tasks are {list(TRAINING_JOBS)} (no parameter "
                         f"servers, no side-car evaluator)")
    if len(cluster.get("chief", ())) > 1:
        raise ValueError(f"{TF_CONFIG}: at most one chief, got {cluster['chief']}")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"{TF_CONFIG}: missing or incomplete \"task\" (got {task!r}): each process needs "
                         f"{{\"type\": one of {sorted(cluster)}, \"index\": N}} to know which task it is")
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise ValueError(f"{TF_CONFIG}: task type {task_type!r} is not in the cluster ({sorted(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"{TF_CONFIG}: task index must be an integer, got {index!r}")
    if not 0 <= index < len(cluster[task_type]):
        raise ValueError(f"{TF_CONFIG}: task index {index} is out of range: the cluster has "
                         f"{len(cluster[task_type])} {task_type!r} task(s) (indices 0..{len(cluster[task_type]) - 1})")
    return ClusterTask(task_type=task_type, index=index, workers=sum(len(cluster.get(j, ())) for j in TRAINING_JOBS),
                       has_chief="chief" in cluster)


def is_chief(tf_config: str | None = None) -> bool:
    """Whether this process writes the run's outputs: True without ``TF_CONFIG`` or with a single
    worker; in a cluster, the "chief" task, or worker 0 when there is no chief entry."""
    task = cluster_task(tf_config)
    return task is None or task.is_chief


_MULTI_WORKER: dict[str, tf.distribute.Strategy] = {}  # TF_CONFIG -> its strategy: one per process


def _multi_worker_strategy(task: ClusterTask) -> tf.distribute.Strategy:
    """One MultiWorkerMirroredStrategy per process (it starts this task's gRPC server), reused by
    every later trainer in the process (e.g. ranking after retrieval)."""
    key = os.environ[TF_CONFIG]
    if key not in _MULTI_WORKER:
        try:
            _MULTI_WORKER[key] = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise RuntimeError(
                f"{TF_CONFIG} names {task.workers} workers, but MultiWorkerMirroredStrategy could not be created "
                f"({e}): it must be created before TensorFlow runs its first op in the process; call "
                f"trainer.distribute.choose_strategy() first") from e
    strategy = _MULTI_WORKER[key]
    role = "the chief" if task.is_chief else "not the chief: its outputs go to a temporary directory"
    log(f"{TF_CONFIG}: this process is task {task} ({role}) of {task.workers} workers: "
        f"MultiWorkerMirroredStrategy with {strategy.num_replicas_in_sync} replica(s) in sync")
    return strategy


def choose_strategy() -> tuple[tf.distribute.Strategy, int]:
    """Returns (strategy, replicas): MultiWorkerMirroredStrategy when ``TF_CONFIG`` names more
    than one worker (replicas: across all of them), else MirroredStrategy over the visible GPUs,
    else the default strategy. Under multi-worker it must run before any other TensorFlow op."""
    task = cluster_task()
    if task is not None and task.workers > 1:
        strategy = _multi_worker_strategy(task)
        return strategy, strategy.num_replicas_in_sync
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        strategy = tf.distribute.MirroredStrategy()
        log(f"{len(gpus)} GPU(s): MirroredStrategy with {strategy.num_replicas_in_sync} replica(s)")
        return strategy, strategy.num_replicas_in_sync
    log("no GPU visible: training on CPU (default strategy)")
    return tf.distribute.get_strategy(), 1


@contextlib.contextmanager
def output_dirs(*dirs: str | None):
    """The directories this process writes a run's outputs into (None stays None): the given
    ones on the chief and in a single process; on any other worker the same names under a
    temporary directory, deleted on exit. Every worker still writes: saving a model can run
    collective ops over distributed variables, so all must take part (the TF multi-worker
    pattern); only the chief's copy is kept. Each given directory's parent is mirrored too
    (the Model artifact directory is the serving directory's parent)."""
    task = cluster_task()
    if task is None or task.is_chief:
        yield dirs
        return
    scratch = tempfile.mkdtemp(prefix=f"recsys-{task.task_type}-{task.index}-")
    log(f"task {task} is not the chief: writing this run's outputs into {scratch} (deleted afterwards)")
    try:
        yield tuple(None if d is None else os.path.join(scratch, str(i), os.path.basename(d.rstrip("/")) or "out")
                    for i, d in enumerate(dirs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def policy_name(hp) -> str:
    """The Keras dtype policy of a model: ``hp.precision`` when it is not float32; else
    ``mixed_float16`` when ``hp.mixed_precision`` is on and a GPU is present; else float32."""
    if hp.precision != "float32":
        return hp.precision
    if hp.mixed_precision and tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


@contextlib.contextmanager
def policy_scope(name: str):
    """Sets the global Keras dtype policy for the layers built inside; restores the previous one."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def precision_scope(hp, kind: str = ""):
    """Builds (and compiles) a model under its dtype policy (``policy_name``). Under
    ``mixed_float16`` Keras' ``compile`` wraps the optimizer in a LossScaleOptimizer itself."""
    name = policy_name(hp)
    if name != "float32":
        log(f"{kind}: dtype policy {name}")
    with policy_scope(name):
        yield name
