# syntax=docker/dockerfile:1
# Pipeline image for Kubeflow Pipelines (TFX KubeflowV2DagRunner / Vertex AI
# Pipelines). Build from the repository root (the context needs the lock files
# and the sources; pipeline.Dockerfile.dockerignore next to this file keeps the
# context small with BuildKit):
#
#   docker build -f deploy/docker/pipeline.Dockerfile -t <registry>/recsys-pipeline:<git-sha> .
#
# What TFX needs from this image:
#   * The compiled pipeline spec sets each task's container `command` itself:
#       python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor
#         --executor_class_path=... --json_serialized_invocation_args=...
#     (and `python -m tfx.orchestration.kubeflow.v2.file_based_example_gen.driver`
#     for the ExampleGen driver hook). The KFP launcher prepends itself to that
#     command, and a Kubernetes `command` replaces the image ENTRYPOINT, so the
#     image only has to provide `python` on PATH with tfx==1.16.0 (and the rest
#     of requirements.lock.txt) importable. ENTRYPOINT below is the same module,
#     for running an executor by hand (`docker run --entrypoint bash` to debug).
#   * The user code the components import (trainer.*, tfx_pipeline.*,
#     serving.*) installed in site-packages, so module paths such as
#     `trainer.retrieval.train.run_fn` resolve without a module_file upload.
#   * Access to the pipeline root (gs:// via tensorflow-io-gcs-filesystem and
#     the pod's workload identity; nothing is baked in here). TFX's own executors
#     read and write gs:// through tf.io.gfile; this project's components still use
#     local file I/O (README, "Scaling out"), so for them the pipeline root and the
#     tables must be paths the pod sees as files (a mounted volume).
# Pass the image as KubeflowV2DagRunnerConfig(default_image=...) when compiling.
#
# Not built here: this repository's CI has no Docker engine. The commands mirror
# the Makefile's `install` target, which is what was exercised.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build: install the locked wheels (compilers only in this stage) ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1
# A few locked packages may ship sdists only for some platforms.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential git \
 && rm -rf /var/lib/apt/lists/*
RUN pip install uv==0.5.11
WORKDIR /src
# Dependencies first so the layer is cached across source changes. --no-deps:
# the lock files are complete and exact; nothing is resolved at build time.
COPY requirements.lock.txt requirements-extra.lock.txt ./
RUN uv pip install --system --no-deps \
      -r requirements.lock.txt -r requirements-extra.lock.txt
# The project itself, also --no-deps (its dependencies are the locks above);
# setuptools comes from requirements.lock.txt, hence --no-build-isolation.
COPY pyproject.toml README.md* ./
COPY tfx_pipeline ./tfx_pipeline
COPY trainer ./trainer
COPY serving ./serving
RUN uv pip install --system --no-deps --no-build-isolation . \
 && python -c "import tfx, tensorflow, tensorflow_recommenders, scann, trainer, tfx_pipeline; print('tfx', tfx.__version__)"

# ---- runtime ----
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Same base image, so copying the interpreter prefix is exact.
COPY --from=build /usr/local /usr/local
WORKDIR /pipeline
# Dataset/pipeline configs, read by `recsys` when compiling/running, and the curated
# schemas: a compiled spec's ImportSchemaGen reads /pipeline/schemas/<dataset>/schema.pbtxt
# (tfx_pipeline/kubeflow_paths.py; tests/tfx_pipeline/test_kubeflow_spec.py checks every
# in-image path a spec names against these lines).
COPY configs ./configs
COPY schemas ./schemas
ENTRYPOINT ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
