#!/usr/bin/env python3
"""Link ScaNN's TensorFlow custom ops into a TensorFlow Serving source tree.

Used by deploy/docker/tf_serving_scann.Dockerfile (inside the TF Serving devel
image, before `bazel build`). It does what google-research's
scann/tf_serving/patches did for the google/tf-serving-scann images (<= 2.11),
but as edits keyed on content rather than line-numbered diffs, so that it fails
loudly, naming the file, when the upstream layout has moved:

1. ScaNN: `//scann/oss_wrappers:tf_dependency` points at the pip TensorFlow
   (@local_config_tf); inside TF Serving it must use the TensorFlow that TF
   Serving itself builds (@org_tensorflow), or the ops would link against a
   second TensorFlow.
2. ScaNN: drop the pybind11 targets of scann/scann_ops/cc/BUILD.bazel (TF
   Serving's workspace has no @pybind11_bazel) and add `scann_ops_static`, an
   alwayslink cc_library of the op registrations + kernels, so the linker keeps
   the static REGISTER_OP / REGISTER_KERNEL_BUILDER initialisers.
3. TF Serving: declare @com_google_scann (local_repository) in WORKSPACE and add
   `scann_ops_static` to SUPPORTED_TENSORFLOW_OPS in
   tensorflow_serving/model_servers/BUILD, the list TF Serving's custom-op guide
   says to extend.

Standard library only (runs under the devel image's python3). Unit-tested
offline on fixtures shaped like the upstream files (tests/deploy); never run
against the real trees here (no network, no Docker engine).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

SCANN_REPO = "com_google_scann"
SCANN_OPS_TARGET = f"@{SCANN_REPO}//scann/scann_ops/cc:scann_ops_static"
# Anchor in TF Serving's SUPPORTED_TENSORFLOW_OPS (present since 1.x, still in 2.16).
TF_TEXT_OPS = '"@org_tensorflow_text//tensorflow_text:ops_lib",'
TF_DEPS_FOR_OPS = (
    '"@org_tensorflow//tensorflow/core:framework",',
    '"@org_tensorflow//tensorflow/core:lib",',
)
SCANN_OPS_STATIC = '''
cc_library(
    name = "scann_ops_static",
    alwayslink = 1,
    deps = [
        ":scann_ops",
        ":scann_ops_kernels",
    ],
)
'''


class PatchError(RuntimeError):
    pass


def patch_oss_wrappers_build(text: str) -> str:
    """tf_dependency: @local_config_tf (pip TF) -> @org_tensorflow (TF Serving's)."""
    if "@org_tensorflow//tensorflow/core:framework" in text:
        return text  # already patched
    lines = text.splitlines(keepends=True)
    out, replaced = [], False
    for line in lines:
        if "@local_config_tf//" in line:
            if not replaced:
                indent = line[: len(line) - len(line.lstrip())]
                out.extend(f"{indent}{dep}\n" for dep in TF_DEPS_FOR_OPS)
                replaced = True
            continue
        out.append(line)
    if not replaced:
        raise PatchError("scann/oss_wrappers/BUILD.bazel: no @local_config_tf deps found")
    return "".join(out)


def _drop_rule_calls(text: str, rule: str) -> str:
    """Remove every top-level `rule(...)` call (balanced parentheses)."""
    out, i = [], 0
    pattern = re.compile(rf"^{re.escape(rule)}\(", re.M)
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        depth, j = 0, m.end() - 1
        while j < len(text):
            if text[j] == "(":
                depth += 1
            elif text[j] == ")":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        else:
            raise PatchError(f"unbalanced {rule}( call")
        i = j + 1
        if text[i : i + 1] == "\n":
            i += 1


def patch_scann_ops_build(text: str) -> str:
    if 'name = "scann_ops_kernels"' not in text or 'name = "scann_ops"' not in text:
        raise PatchError(
            "scann/scann_ops/cc/BUILD.bazel: targets scann_ops / scann_ops_kernels not found"
        )
    text = re.sub(r'^load\("@pybind11_bazel//[^\n]*\)\n', "", text, flags=re.M)
    text = _drop_rule_calls(text, "pybind_library")
    text = _drop_rule_calls(text, "pybind_extension")
    if 'name = "scann_ops_static"' not in text:
        text = text.rstrip("\n") + "\n" + SCANN_OPS_STATIC
    return text


def patch_model_servers_build(text: str) -> str:
    if SCANN_OPS_TARGET in text:
        return text
    start = text.find("SUPPORTED_TENSORFLOW_OPS")
    if start < 0:
        raise PatchError("tensorflow_serving/model_servers/BUILD: SUPPORTED_TENSORFLOW_OPS not found")
    anchor = text.find(TF_TEXT_OPS, start)
    if anchor < 0:
        raise PatchError(
            "tensorflow_serving/model_servers/BUILD: tensorflow_text ops_lib not found in "
            "SUPPORTED_TENSORFLOW_OPS; add " + SCANN_OPS_TARGET + " to that list by hand"
        )
    line_start = text.rfind("\n", 0, anchor) + 1
    indent = text[line_start:anchor]
    end = anchor + len(TF_TEXT_OPS)
    return text[:end] + f'\n{indent}"{SCANN_OPS_TARGET}",' + text[end:]


def patch_workspace(text: str, scann_path: str) -> str:
    if f'name = "{SCANN_REPO}"' in text:
        return text
    return (
        text.rstrip("\n")
        + f'\n\n# ScaNN custom ops (deploy/docker/scann/patch_tf_serving.py).\n'
        + f'local_repository(\n    name = "{SCANN_REPO}",\n    path = "{scann_path}",\n)\n'
    )


def external_repos(scann_root: pathlib.Path) -> set[str]:
    """External repositories ScaNN's BUILD files refer to (diagnostics: each must
    exist in TF Serving's workspace, which provides absl, protobuf, eigen...)."""
    repos: set[str] = set()
    for p in scann_root.rglob("BUILD*"):
        repos.update(re.findall(r'"@([A-Za-z0-9_.\-]+)//', p.read_text()))
    return repos


def _edit(path: pathlib.Path, fn, *args) -> None:
    if not path.is_file():
        raise PatchError(f"missing {path}")
    path.write_text(fn(path.read_text(), *args))
    print(f"patched {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serving-root", default="/tensorflow-serving")
    ap.add_argument("--scann-root", default="/scann")
    a = ap.parse_args(argv)
    serving, scann = pathlib.Path(a.serving_root), pathlib.Path(a.scann_root)
    try:
        _edit(scann / "scann/oss_wrappers/BUILD.bazel", patch_oss_wrappers_build)
        _edit(scann / "scann/scann_ops/cc/BUILD.bazel", patch_scann_ops_build)
        _edit(serving / "tensorflow_serving/model_servers/BUILD", patch_model_servers_build)
        _edit(serving / "WORKSPACE", patch_workspace, str(scann))
    except PatchError as e:
        print(f"patch_tf_serving: {e}", file=sys.stderr)
        return 1
    print("external repositories referenced by ScaNN:", ", ".join(sorted(external_repos(scann))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
