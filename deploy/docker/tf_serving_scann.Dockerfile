# syntax=docker/dockerfile:1
# TensorFlow Serving 2.16 built from source with ScaNN's TensorFlow ops linked
# in, so that the `retrieval` SavedModel (ops Scann>ScannSearchBatched,
# Scann>TensorsToScann, ...) loads. This is how the google/tf-serving-scann
# images were made up to 2.11 (google-research scann/tf_serving); no such image
# is published for 2.16, hence this file.
#
# Build (context = deploy/docker, for scann/patch_tf_serving.py):
#   docker build -f deploy/docker/tf_serving_scann.Dockerfile \
#     --build-arg SCANN_GIT_REF=<commit of the ScaNN 1.3.2 release> \
#     -t <registry>/recsys/tf-serving-scann:2.16.1-scann1.3.2 deploy/docker
# Expect hours of CPU and >= 16 GB RAM (limit with
# --build-arg TF_SERVING_BAZEL_OPTIONS="--local_ram_resources=12288 --jobs=8").
#
# WHAT WAS AND WAS NOT VERIFIED. Nothing here has been built: the environment
# this was written in has no Docker engine and no network. Checked offline:
# the Dockerfile structure and pins (tests/deploy), and the source edits of
# scann/patch_tf_serving.py on fixtures shaped like the upstream BUILD files.
# NOT checked: that tensorflow/serving:2.16.1-devel still carries the source at
# /tensorflow-serving as earlier devel images did; that ScaNN's BUILD files at
# SCANN_GIT_REF still have the layout the script expects (it fails loudly if
# not); that every external repository ScaNN's BUILD files use exists in TF
# Serving 2.16's workspace (the script prints the list; add missing ones to
# WORKSPACE); that the result compiles and links. Treat the first build as a
# porting exercise, and run the smoke check at the end of the build stage.
#
# ScaNN must be the same release as the pip `scann` used at export time
# (scann==1.3.2 in requirements.lock.txt): the SavedModel stores the op
# definitions, and a server whose Scann>* op defs differ refuses to load it.

ARG TF_SERVING_DEVEL_IMAGE=tensorflow/serving:2.16.1-devel
# Must be the distribution the devel image is based on (glibc / libstdc++ of
# the binary); the stock 2.16 images use Ubuntu 20.04.
ARG RUNTIME_IMAGE=ubuntu:20.04

# ---- source: TF Serving 2.16.1 tree + ScaNN sources, patched together ----
FROM ${TF_SERVING_DEVEL_IMAGE} AS source
ARG SCANN_GIT_URL=https://github.com/google-research/scann.git
# Deliberately no default: pin the exact commit of the release you exported with.
ARG SCANN_GIT_REF
RUN test -n "${SCANN_GIT_REF}" \
 || { echo "set --build-arg SCANN_GIT_REF=<commit of the ScaNN 1.3.2 release>" >&2; exit 1; }
RUN test -f /tensorflow-serving/WORKSPACE \
 || { echo "no TF Serving source at /tensorflow-serving in the devel image" >&2; exit 1; }
RUN git init /scann \
 && git -C /scann remote add origin "${SCANN_GIT_URL}" \
 && git -C /scann fetch --depth 1 origin "${SCANN_GIT_REF}" \
 && git -C /scann checkout --detach FETCH_HEAD
COPY scann/patch_tf_serving.py /usr/local/bin/patch_tf_serving.py
RUN python3 /usr/local/bin/patch_tf_serving.py \
      --serving-root /tensorflow-serving --scann-root /scann

# ---- build: bazel build of the model server with the ScaNN ops ----
FROM source AS build
WORKDIR /tensorflow-serving
# ScaNN's kernels need AVX2/FMA (its own .bazelrc builds with them); the pods
# must then run on x86-64 nodes with AVX2 (any recent Xeon/EPYC).
ARG TF_SERVING_BUILD_OPTIONS="--config=release --copt=-mavx2 --copt=-mfma --cxxopt=-std=c++17"
ARG TF_SERVING_BAZEL_OPTIONS=""
RUN bazel build --color=yes --curses=no --verbose_failures \
      ${TF_SERVING_BAZEL_OPTIONS} ${TF_SERVING_BUILD_OPTIONS} \
      tensorflow_serving/model_servers:tensorflow_model_server \
 && cp bazel-bin/tensorflow_serving/model_servers/tensorflow_model_server /usr/local/bin/ \
 && bazel clean --expunge && rm -rf /root/.cache
# Smoke check: the op registrations made it into the binary (alwayslink).
RUN grep -a -q 'Scann>ScannSearchBatched' /usr/local/bin/tensorflow_model_server \
 && grep -a -q 'Scann>TensorsToScann' /usr/local/bin/tensorflow_model_server \
 && /usr/local/bin/tensorflow_model_server --version

# ---- runtime: same layout as the stock tensorflow/serving image ----
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="tf-serving-scann" \
      org.opencontainers.image.description="TensorFlow Serving 2.16.1 with ScaNN 1.3.2 TF ops"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/tensorflow_model_server /usr/bin/tensorflow_model_server
# gRPC, REST (+ Prometheus metrics on the REST port): deploy/k8s/*/service.yaml.
EXPOSE 8500 8501
ENV MODEL_BASE_PATH=/models
RUN mkdir -p /models /config
# The Kubernetes manifests set command/args; this default mirrors them for
# `docker run -v <serving dir>:/models -v <config dir>:/config IMAGE`.
ENTRYPOINT ["/usr/bin/tensorflow_model_server"]
CMD ["--port=8500", "--rest_api_port=8501", "--model_config_file=/config/models.config"]
