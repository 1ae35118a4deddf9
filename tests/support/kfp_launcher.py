"""The KFP v2 launcher's part for one task of a compiled spec, on local paths, without a cluster.

For a task of ``pipeline.json`` (pipeline spec schema 2.0.0, as TFX 1.16 compiles it),
``run_task`` builds the ``ExecutorInput`` the launcher would (the task's constant
parameters; input artifacts from the producer tasks' ``executor_output.json``, typed by
the component's input definitions; output artifact URIs and the output file under the
pipeline root), substitutes it for ``{{$}}`` in the executor's container args and runs
the container's command (TFX's ``kubeflow_v2_run_executor``) in a subprocess, in the
working directory given. What it does not do: pull the image, talk to ML Metadata,
resolve cache hits, or run drivers/importers/resolvers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


class TaskFailed(AssertionError):
    pass


def _parameters(task: dict) -> dict:
    """Name -> pipeline_spec Value (JSON) of the task's constant parameters."""
    out = {}
    for name, value in task.get("inputs", {}).get("parameters", {}).items():
        runtime = value.get("runtimeValue")
        if runtime is None or "constantValue" not in runtime:
            raise TaskFailed(f"parameter {name!r} is not a constant ({value}); this launcher stand-in handles "
                             "constants only")
        out[name] = runtime["constantValue"]
    return out


def _input_artifacts(task: dict, component: dict, outputs_of: dict[str, dict]) -> dict:
    out = {}
    for key, ref in task.get("inputs", {}).get("artifacts", {}).items():
        producer = ref["taskOutputArtifact"]["producerTask"]
        if producer not in outputs_of:
            raise TaskFailed(f"input {key!r} comes from task {producer!r}, which has not run")
        artifacts = outputs_of[producer]["artifacts"][ref["taskOutputArtifact"]["outputArtifactKey"]]["artifacts"]
        kind = component["inputDefinitions"]["artifacts"][key]["artifactType"]
        out[key] = {"artifacts": [{**a, "type": kind} for a in artifacts]}
    return out


def executor_input(spec: dict, task_name: str, task_root: str, outputs_of: dict[str, dict]) -> dict:
    pipeline = spec["pipelineSpec"]
    task = pipeline["root"]["dag"]["tasks"][task_name]
    component = pipeline["components"][task["componentRef"]["name"]]
    outputs = {key: {"artifacts": [{"name": f"{task_name}-{key}", "type": d["artifactType"],
                                    "uri": f"{task_root}/{key}", "metadata": {}}]}
               for key, d in component.get("outputDefinitions", {}).get("artifacts", {}).items()}
    return {"inputs": {"parameters": _parameters(task),
                       "artifacts": _input_artifacts(task, component, outputs_of)},
            "outputs": {"artifacts": outputs, "outputFile": f"{task_root}/executor_output.json"}}


def run_task(spec: dict, task_name: str, pipeline_root: str, workdir: str, outputs_of: dict[str, dict],
             timeout_s: float = 600) -> dict:
    """Runs ``task_name``'s container command; returns its executor output (also stored in
    ``outputs_of[task_name]`` for the tasks downstream). ``TaskFailed`` with the log's tail."""
    pipeline = spec["pipelineSpec"]
    component = pipeline["components"][pipeline["root"]["dag"]["tasks"][task_name]["componentRef"]["name"]]
    container = pipeline["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
    task_root = f"{pipeline_root}/{task_name}_0"
    payload = json.dumps(executor_input(spec, task_name, task_root, outputs_of))
    argv = [*container["command"], *(payload if a == "{{$}}" else a for a in container["args"])]
    # The image's `python` is the one with the pinned stack: here, this interpreter's.
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise TaskFailed(f"task {task_name} exited {done.returncode}:\n{done.stderr[-6000:]}")
    output_file = Path(task_root) / "executor_output.json"
    if not output_file.is_file():
        raise TaskFailed(f"task {task_name} wrote no {output_file}:\n{done.stderr[-3000:]}")
    outputs_of[task_name] = json.loads(output_file.read_text())
    return outputs_of[task_name]
