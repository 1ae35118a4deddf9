"""File I/O on local paths and URIs alike, through ``tf.io.gfile``.

The project's own components (the gates, IndexBuilder, RecommenderBuilder,
InfraValidator, AtomicPusher), the trainer's outputs and the report read and write
through here or through ``tf.io.gfile`` directly, so a pipeline root or serving base on
``gs://``, ``s3://`` or ``hdfs://`` (any scheme TensorFlow has a filesystem for) is used
as given, like TFX's own executors use it. On a local path every call does what the
``open`` / ``os`` / ``shutil`` call it replaced did.

``tf.io.gfile`` raises ``tf.errors.OpError`` subclasses (``NotFoundError`` ...), not
``OSError``; callers that must tell "missing" apart check ``exists`` first. TensorFlow is
imported on first use, so importing this module stays cheap (the config and report code
import it before any TensorFlow work).
"""

from __future__ import annotations

import io
import json

import numpy as np


class _LazyGfile:
    """``tf.io.gfile``, imported when first used."""

    def __getattr__(self, name: str):
        import tensorflow as tf

        return getattr(tf.io.gfile, name)


gfile = _LazyGfile()


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (gs, s3, hdfs, ram ...); False for a local path."""
    return "://" in str(path)


def _replace(path: str) -> None:
    """Makes a write or copy to ``path`` replace the file, as it does on every other filesystem:
    TensorFlow's ``ram://`` (the tests' stand-in for an object store) appends to an existing file."""
    if str(path).startswith("ram://") and gfile.exists(path) and not gfile.isdir(path):
        gfile.remove(path)


def read_text(path: str) -> str:
    with gfile.GFile(path, "r") as fh:
        return fh.read()


def write_text(path: str, text: str) -> None:
    _replace(path)
    with gfile.GFile(path, "w") as fh:
        fh.write(text)


def read_bytes(path: str) -> bytes:
    with gfile.GFile(path, "rb") as fh:
        return fh.read()


def write_bytes(path: str, data: bytes) -> None:
    _replace(path)
    with gfile.GFile(path, "wb") as fh:
        fh.write(data)


def read_json(path: str):
    return json.loads(read_text(path))


def write_json(path: str, value, indent: int = 2, **kwargs) -> None:
    write_text(path, json.dumps(value, indent=indent, **kwargs))


def save_npy(path: str, array: np.ndarray) -> None:
    """``np.save(path, array)`` (``path`` must end in ``.npy``, no suffix is added)."""
    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes(path, buf.getvalue())


def save_npz(path: str, *arrays: np.ndarray) -> None:
    """``np.savez(path, *arrays)``; built in memory: zip files seek, which not every filesystem can."""
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    write_bytes(path, buf.getvalue())


def load_npy(path: str):
    """``np.load(path)`` of a ``.npy`` or ``.npz`` file, read whole first."""
    return np.load(io.BytesIO(read_bytes(path)))


def copy_file(src: str, dst: str) -> None:
    """``shutil.copyfile``: overwrites ``dst``."""
    _replace(dst)
    gfile.copy(src, dst, overwrite=True)


def copy_tree(src: str, dst: str) -> None:
    """``shutil.copytree(src, dst, dirs_exist_ok=True)``: every file and directory of src under dst.

    Directories are created explicitly (some filesystems, ``ram://`` among them, list only
    directories that were made).
    """
    src = src.rstrip("/")
    dst = dst.rstrip("/")
    if not gfile.isdir(src):
        raise FileNotFoundError(f"{src} is not a directory; nothing to copy")
    gfile.makedirs(dst)
    for root, dirs, files in walk(src):
        target = dst + root[len(src):]
        for name in dirs:
            gfile.makedirs(f"{target}/{name}")
        for name in files:
            copy_file(f"{root}/{name}", f"{target}/{name}")


def walk(path: str):
    """``tf.io.gfile.walk`` (top-down), without the names that do not exist.

    TensorFlow's ``ram://`` lists, in a directory ``assets``, the files of a sibling
    ``assets.extra`` too (it matches children by name prefix), under names that do not
    exist; every other filesystem lists only real entries, and loses nothing here.
    """
    for root, dirs, files in gfile.walk(path):
        if str(path).startswith("ram://"):
            dirs[:] = [d for d in dirs if gfile.isdir(f"{root}/{d}")]
            files = [f for f in files if gfile.exists(f"{root}/{f}") and not gfile.isdir(f"{root}/{f}")]
        yield root, dirs, files


def files_under(path: str) -> list[str]:
    """Every file below ``path``, as paths relative to it ("a/b.txt"), in walk order."""
    path = path.rstrip("/")
    out = []
    for root, _, files in walk(path):
        rel = root[len(path):].lstrip("/")
        out += [f"{rel}/{name}" if rel else name for name in files]
    return out


def remove_tree(path: str) -> None:
    """``shutil.rmtree(path, ignore_errors=True)``."""
    import tensorflow as tf

    try:
        if gfile.exists(path):
            gfile.rmtree(path)
    except tf.errors.OpError:
        pass
