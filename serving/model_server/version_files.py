"""What counts as a version directory, and when one is complete enough to load.

The one place for the rule, shared by the server's version scan and by
``recsys rollback`` (tfx_pipeline/rollback.py), so that neither ever treats a
half-written copy as a version:

- a version is a directory under the model's base path whose name is a
  non-negative int64 in decimal (TF Serving's rule); anything else (``.tmp-...``
  written by an atomic push, ``.rolled_back-...`` left by a rollback) is ignored;
- it is complete when it holds ``saved_model.pb`` (or ``.pbtxt``) that parses,
  ``variables/variables.index`` that opens and every data shard
  ``variables.data-XXXXX-of-NNNNN`` of that bundle, and every asset file the
  graph references (``asset_file_def``).

Hand-written because TF Serving has no such check: it loads whatever directory
appears and relies on writers renaming complete copies into place. Our pushes
do that too (tfx_pipeline/components/atomic_pusher.py); this check catches the
copies that don't (``cp -r``, ``gsutil cp``, a push killed half-way).

The completeness check and the version scan read through ``tf.io.gfile``, so they work on
a base path or version directory given as a URI (``gs://``, ``ram://`` ...) too; the
scan of a local base path stays one ``os.scandir`` (the server polls it often).
"""

from __future__ import annotations

import os
import re

import tensorflow as tf
from google.protobuf import message, text_format
from tensorflow.core.protobuf import saved_model_pb2

from serving.fileio import gfile, is_uri, walk

# TF Serving parses version directory names as int64.
_MAX_VERSION = 2**63 - 1
_SHARD = re.compile(r"^variables\.data-(\d{5})-of-(\d{5})$")


def parse_version(name: str) -> int | None:
    """The version number a directory name stands for, or None when it is not one."""
    if not name.isascii() or not name.isdigit():
        return None
    version = int(name)
    return version if version <= _MAX_VERSION else None


def version_dirs(base_path: str) -> dict[int, str]:
    """Version number -> directory, for every version-named directory under base_path.

    Raises:
        OSError: the base path cannot be listed (missing, not a directory, no permission).
    """
    result = {}
    if is_uri(base_path):
        try:
            names = gfile.listdir(base_path)
        except tf.errors.OpError as e:
            raise OSError(f"{base_path}: {e.message}") from e
        for name in names:
            name = name.rstrip("/")  # object stores list "directories" with a trailing slash
            path = f"{base_path.rstrip('/')}/{name}"
            version = parse_version(name)
            if version is not None and gfile.isdir(path):
                result[version] = path
        return result
    for entry in os.scandir(base_path):
        version = parse_version(entry.name)
        if version is not None and entry.is_dir():
            result[version] = entry.path
    return result


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
    """The parsed SavedModel proto of a version directory.

    Raises:
        FileNotFoundError: neither saved_model.pb nor saved_model.pbtxt exists.
        ValueError: the file does not parse (truncated, still being written, not a SavedModel).
    """
    saved_model = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    pbtxt = os.path.join(path, "saved_model.pbtxt")
    try:
        if gfile.exists(pb):
            with gfile.GFile(pb, "rb") as f:
                saved_model.ParseFromString(f.read())
        elif gfile.exists(pbtxt):
            with gfile.GFile(pbtxt, "rb") as f:
                text_format.Parse(f.read().decode("utf-8"), saved_model)
        else:
            raise FileNotFoundError(f"no saved_model.pb in {path}")
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
        raise ValueError(f"saved_model.pb in {path} does not parse ({e})") from e
    except tf.errors.NotFoundError as e:  # removed between the check and the read
        raise FileNotFoundError(f"no saved_model.pb in {path} ({e.message})") from e
    if not saved_model.meta_graphs:
        raise ValueError(f"saved_model.pb in {path} holds no MetaGraph")
    return saved_model


def _variables_problem(path: str, saved_model: saved_model_pb2.SavedModel) -> str | None:
    # TF2 SavedModels always carry a saver_def (and variables/, even with no variables);
    # a TF1 SavedModel without variables has neither.
    if not any(mg.HasField("saver_def") for mg in saved_model.meta_graphs):
        return None
    variables = os.path.join(path, "variables")
    if not _isfile(os.path.join(variables, "variables.index")):
        return "variables/variables.index is missing"
    shards: dict[int, set[int]] = {}
    for name in gfile.listdir(variables):
        m = _SHARD.match(name)
        if m:
            shards.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if not shards:
        return "variables/ holds no variables.data-*-of-* shard"
    if len(shards) > 1:
        return f"variables/ mixes bundles of {sorted(shards)} shards"
    (count, present), = shards.items()
    missing = sorted(set(range(count)) - present)
    if missing:
        return f"variables/ lacks data shard(s) {missing} of {count}"
    # The index is a table with its footer at the end: a truncated copy does not open.
    from tensorflow.python.training import py_checkpoint_reader

    try:
        py_checkpoint_reader.NewCheckpointReader(os.path.join(variables, "variables"))
    except Exception as e:  # the reader raises plain RuntimeError/DataLossError with the reason
        return f"variables/variables.index does not open ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def _isfile(path: str) -> bool:
    return gfile.exists(path) and not gfile.isdir(path)


def incomplete_reason(path: str) -> str | None:
    """None when the version directory is complete; else what is missing or broken.

    Reads saved_model.pb and opens the variables index, so callers should cache the
    answer per directory fingerprint (see fingerprint()). A directory that vanishes
    or cannot be read meanwhile (moved by a rollback, permissions) is incomplete too.
    """
    try:
        return _incomplete_reason(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    except tf.errors.OpError as e:  # what tf.io.gfile raises instead of OSError
        return f"cannot be read ({e.message or type(e).__name__})"


def _incomplete_reason(path: str) -> str | None:
    try:
        saved_model = read_saved_model(path)
    except FileNotFoundError:
        return "saved_model.pb is missing"
    except ValueError as e:
        return str(e).replace(f" in {path}", "")
    problem = _variables_problem(path, saved_model)
    if problem:
        return problem
    assets = os.path.join(path, "assets")
    missing = sorted({a.filename for mg in saved_model.meta_graphs for a in mg.asset_file_def
                      if not _isfile(os.path.join(assets, a.filename))})
    if missing:
        return f"asset file(s) {missing} missing from assets/"
    return None


def complete_versions(base_path: str) -> dict[int, str]:
    """The complete versions under a base path (version -> directory).

    Raises:
        OSError: the base path cannot be listed.
    """
    return {v: p for v, p in version_dirs(base_path).items() if incomplete_reason(p) is None}


def fingerprint(path: str) -> tuple:
    """Cheap change detector for a version directory: names, sizes, mtimes, two levels deep."""
    if is_uri(path):
        return _uri_fingerprint(path)
    items = []
    for root, dirs, files in os.walk(path):
        depth = root[len(path):].count(os.sep)
        if depth >= 2:
            dirs[:] = []
        for name in sorted(files + dirs):
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            items.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(items))


def _uri_fingerprint(path: str) -> tuple:
    """``fingerprint`` through tf.io.gfile (object stores: every object, with its size and mtime)."""
    path = path.rstrip("/")
    items = []
    try:
        for root, _, files in walk(path):
            for name in files:
                full = f"{root}/{name}"
                st = gfile.stat(full)
                items.append((full[len(path) + 1:], st.length, st.mtime_nsec))
    except tf.errors.OpError:  # vanished meanwhile: whatever was seen, the next poll sees the change
        pass
    return tuple(sorted(items))
