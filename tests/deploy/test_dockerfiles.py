"""Offline checks of deploy/docker: a tiny Dockerfile parser (no Docker engine
here), pins, the lock-file install of the pipeline image, ports consistent with
the manifests, and the ScaNN source patcher on fixtures shaped like upstream."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shlex

import pytest
import yaml

from tests.support.dockerfile import parse_dockerfile

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
K8S = REPO / "deploy" / "k8s"
PIPELINE = DOCKER / "pipeline.Dockerfile"
SCANN = DOCKER / "tf_serving_scann.Dockerfile"
DOCKERFILES = [PIPELINE, SCANN]


# --------------------------------------------------------------------------- parser


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def from_images(instrs) -> list[tuple[str, str | None]]:
    """(image, stage alias) per FROM, with global ARG defaults substituted."""
    global_args: dict[str, str] = {}
    seen_from = False
    stages: list[tuple[str, str | None]] = []
    for instr, args in instrs:
        if instr == "ARG" and not seen_from:
            name, _, default = args.partition("=")
            global_args[name] = default.strip('"')
        elif instr == "FROM":
            seen_from = True
            parts = [p for p in args.split() if not p.startswith("--platform")]
            image = _substitute(parts[0], global_args)
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append((image, alias))
    return stages


def _is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return bool(tag) and "latest" not in tag and "$" not in tag


def test_parser_on_fixture():
    text = "ARG B=img:1\n# c\nFROM ${B} AS x\nRUN a \\\n  # inner\n  && b\nFROM x\nEXPOSE 1 2\n"
    instrs = parse_dockerfile(text)
    assert instrs == [("ARG", "B=img:1"), ("FROM", "${B} AS x"), ("RUN", "a  && b"), ("FROM", "x"), ("EXPOSE", "1 2")]
    assert from_images(instrs) == [("img:1", "x"), ("x", None)]
    assert _is_pinned("python:3.11.11-slim-bookworm")
    assert _is_pinned("tensorflow/serving@sha256:" + "0" * 64)
    assert not _is_pinned("ubuntu")
    assert not _is_pinned("ubuntu:latest")
    assert not _is_pinned("localhost:5000/ubuntu")


# --------------------------------------------------------------------------- both images


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_from_images_pinned(path):
    stages = from_images(parse_dockerfile(path.read_text()))
    assert stages
    aliases: set[str] = set()
    for image, alias in stages:
        if image not in aliases:  # an earlier stage is fine; external images must be pinned
            assert _is_pinned(image), f"{path.name}: FROM {image} is not pinned"
        if alias:
            aliases.add(alias)


# --------------------------------------------------------------------------- pipeline image


def test_pipeline_image_base_and_lock_install():
    instrs = parse_dockerfile(PIPELINE.read_text())
    bases = [img for img, _ in from_images(instrs)]
    assert all(re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm", b) for b in bases), bases
    copies = " ".join(a for i, a in instrs if i == "COPY")
    assert "requirements.lock.txt" in copies and "requirements-extra.lock.txt" in copies
    runs = [shlex.split(a) for i, a in instrs if i == "RUN"]
    flat = [" ".join(r) for r in runs]
    assert any("uv==0.5.11" in r for r in flat)
    (lock_install,) = [r for r in runs if "requirements.lock.txt" in r]
    assert lock_install[:4] == ["uv", "pip", "install", "--system"] and "--no-deps" in lock_install
    reqs = [lock_install[k + 1] for k, t in enumerate(lock_install) if t == "-r"]
    assert reqs == ["requirements.lock.txt", "requirements-extra.lock.txt"]
    (project_install,) = [r for r in runs if "." in r and r[:3] == ["uv", "pip", "install"]]
    assert "--no-deps" in project_install and "--system" in project_install
    # The lock files it names exist at the repository root (the build context).
    assert (REPO / "requirements.lock.txt").is_file() and (REPO / "requirements-extra.lock.txt").is_file()


def test_pipeline_image_copies_only_tracked_sources_and_python_on_path():
    instrs = parse_dockerfile(PIPELINE.read_text())
    for instr, args in instrs:
        if instr == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                if "*" in src:
                    continue
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    (entry,) = [a for i, a in instrs if i == "ENTRYPOINT"]
    assert yaml.safe_load(entry) == [
        "python",
        "-m",
        "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor",
    ]
    ignore = (DOCKER / "pipeline.Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line for line in ignore if line and not line.startswith("#")]
    assert patterns[0] == "*", "allow-list: exclude everything, then re-include"
    for needed in ("!requirements.lock.txt", "!requirements-extra.lock.txt", "!pyproject.toml", "!trainer/"):
        assert needed in ignore


# --------------------------------------------------------------------------- ScaNN serving image


def _k8s_container_ports(deployment: str) -> set[int]:
    for path in (K8S).rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == deployment:
                return {p["containerPort"] for c in doc["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    raise AssertionError(deployment)


def test_scann_image_ports_match_manifests_and_binary_path():
    instrs = parse_dockerfile(SCANN.read_text())
    exposed = {int(p.split("/")[0]) for i, a in instrs if i == "EXPOSE" for p in a.split()}
    assert exposed == _k8s_container_ports("tf-serving-scann") == _k8s_container_ports("tf-serving")
    # The manifests run /usr/bin/tensorflow_model_server, as in the stock image.
    final_copies = [a for i, a in instrs if i == "COPY" and a.startswith("--from=build")]
    assert any(a.split()[-1] == "/usr/bin/tensorflow_model_server" for a in final_copies)
    stages = from_images(instrs)
    assert stages[0][0].startswith("tensorflow/serving:2.16.1-devel")
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert "tensorflow_serving/model_servers:tensorflow_model_server" in runs
    assert "patch_tf_serving.py" in runs
    assert "Scann>ScannSearchBatched" in runs  # smoke check that the ops got linked
    # The patch script is inside the build context the Dockerfile documents.
    copies = [a for i, a in instrs if i == "COPY" and not a.startswith("--from")]
    for a in copies:
        assert (DOCKER / a.split()[0]).is_file()
    ignore = (DOCKER / ".dockerignore").read_text().splitlines()
    assert "!scann/patch_tf_serving.py" in ignore


# --------------------------------------------------------------------------- patcher


def _load_patcher():
    spec = importlib.util.spec_from_file_location("patch_tf_serving", DOCKER / "scann" / "patch_tf_serving.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Shapes of the upstream files (abridged): TF Serving's model_servers/BUILD and
# ScaNN's BUILD files before google-research's tf_serving patch.
MODEL_SERVERS_BUILD = """\
SUPPORTED_TENSORFLOW_OPS = if_v2([]) + if_not_v2([
    "@org_tensorflow//tensorflow/contrib:contrib_kernels",
]) + [
    "@org_tensorflow_text//tensorflow_text:ops_lib",
    "@org_tensorflow_decision_forests//tensorflow_decision_forests/tensorflow/ops/inference:kernel_and_op",
]

cc_library(
    name = "tensorflow_model_server_main_lib",
)
"""
OSS_WRAPPERS_BUILD = """\
cc_library(
    name = "tf_dependency",
    tags = ["local"],
    deps = [
        "@local_config_tf//:libtensorflow_framework",
        "@local_config_tf//:tf_header_lib",
    ],
)
"""
SCANN_OPS_BUILD = """\
load("@pybind11_bazel//:build_defs.bzl", "pybind_library")

package(default_visibility = ["//visibility:public"])

cc_library(
    name = "scann_ops",
    srcs = ["ops/scann_ops.cc"],
    deps = ["//scann/oss_wrappers:tf_dependency"],
)

cc_library(
    name = "scann_ops_kernels",
    srcs = ["kernels/scann_ops.cc"],
    deps = [":scann", "@com_google_absl//absl/memory"],
    alwayslink = 1,
)

pybind_library(
    name = "scann_npy",
    srcs = ["scann_npy.cc"],
    deps = [
        ":scann",
        f(x),
    ],
)
"""


def test_patcher_edits(tmp_path):
    p = _load_patcher()
    ms = p.patch_model_servers_build(MODEL_SERVERS_BUILD)
    assert '    "@org_tensorflow_text//tensorflow_text:ops_lib",\n    "@com_google_scann//scann/scann_ops/cc:scann_ops_static",\n' in ms
    assert p.patch_model_servers_build(ms) == ms  # idempotent
    with pytest.raises(p.PatchError):
        p.patch_model_servers_build("cc_library(name = 'x')\n")

    ow = p.patch_oss_wrappers_build(OSS_WRAPPERS_BUILD)
    assert "@local_config_tf" not in ow and "@org_tensorflow//tensorflow/core:framework" in ow
    assert p.patch_oss_wrappers_build(ow) == ow

    so = p.patch_scann_ops_build(SCANN_OPS_BUILD)
    assert "pybind" not in so and 'name = "scann_ops_kernels"' in so
    assert re.search(r'name = "scann_ops_static",\s*alwayslink = 1,\s*deps = \[\s*":scann_ops",\s*":scann_ops_kernels"', so)
    assert so.count("(") == so.count(")")
    assert p.patch_scann_ops_build(so) == so
    ws = p.patch_workspace('workspace(name = "tf_serving")\n', "/scann")
    assert 'local_repository(\n    name = "com_google_scann",\n    path = "/scann",\n)' in ws
    assert p.patch_workspace(ws, "/scann") == ws

    # End to end on a fake tree.
    serving, scann = tmp_path / "serving", tmp_path / "scann"
    (serving / "tensorflow_serving/model_servers").mkdir(parents=True)
    (serving / "tensorflow_serving/model_servers/BUILD").write_text(MODEL_SERVERS_BUILD)
    (serving / "WORKSPACE").write_text('workspace(name = "tf_serving")\n')
    (scann / "scann/oss_wrappers").mkdir(parents=True)
    (scann / "scann/scann_ops/cc").mkdir(parents=True)
    (scann / "scann/oss_wrappers/BUILD.bazel").write_text(OSS_WRAPPERS_BUILD)
    (scann / "scann/scann_ops/cc/BUILD.bazel").write_text(SCANN_OPS_BUILD)
    assert p.main(["--serving-root", str(serving), "--scann-root", str(scann)]) == 0
    assert "scann_ops_static" in (serving / "tensorflow_serving/model_servers/BUILD").read_text()
    assert p.external_repos(scann) == {"com_google_absl", "org_tensorflow"}
    assert p.main(["--serving-root", str(tmp_path / "nope"), "--scann-root", str(scann)]) == 1
