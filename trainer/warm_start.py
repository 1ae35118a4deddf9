"""Warm start from the latest blessed model, across vocabulary growth.

Every trained model's artifact carries ``warmstart/``: its trainable variables
(``variables.npz`` + ``variables.json`` naming them) and a copy of the Transform
vocabularies its embedding rows follow. A new run, after building its model on
the new Transform graph, copies over:

- embedding tables with a vocabulary (user ids, item ids, categorical features,
  title tokens): row by row by *token*, so a user or item known before keeps its
  learned row at its new index, and ids new in this span keep their fresh
  initialization; the padding row and the OOV bucket rows carry over too;
- every other variable (towers' dense layers, GRU, cross layers, heads, fixed-size
  embeddings like hour of day or numeric buckets) when its shape is unchanged.

Variables whose shape changed (another architecture or embedding size) are left
freshly initialized and listed in the report. Hand-written because
``tf.keras.callbacks.BackupAndRestore`` / ``tf.train.Checkpoint`` restore by shape
only and ``tf.compat.v1.train.warm_start``'s vocabulary remapping works on
estimator-era variables, not Keras embedding layers built under a new vocabulary.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from serving.fileio import copy_file, load_npy, read_json, save_npz, write_json
from trainer import features as F
from trainer.artifacts import METRICS_FILE, SERVING_DIR, WARM_START_DIR
from trainer.training_logs import log

STATE_DIR = WARM_START_DIR
VARIABLES_FILE = "variables.npz"
INDEX_FILE = "variables.json"
VOCAB_DIR = "vocab"


def _keys(variables) -> list[str]:
    """Stable keys: position + name without Keras' per-process uniquifying suffixes.

    Auto-named layers are ``dense``, ``dense_1``, ... in the order a process creates
    them (the TFX local runner trains both models in one process), so names alone
    differ between runs; the position in ``trainable_variables`` is deterministic
    for one architecture, and a changed architecture changes the keys (left fresh).
    """
    out = []
    for i, v in enumerate(variables):
        name = "/".join(re.sub(r"_\d+$", "", part) for part in v.name.split(":")[0].split("/"))
        out.append(f"{i}:{name}")
    return out


def vocabulary_of(variable_name: str) -> str | None:
    """The Transform vocabulary an embedding variable's rows follow, from its layer name."""
    for part in variable_name.split("/"):
        if not part.startswith("emb_"):
            continue
        feature = part[len("emb_"):]
        if feature == F.USER_ID:
            return F.USER_VOCAB
        if feature == F.ITEM_ID:
            return F.ITEM_VOCAB
        for suffix in (F.IDX_SUFFIX, F.TOKENS_SUFFIX):
            if feature.endswith(suffix):
                return feature[: -len(suffix)]
        return None  # hour, day, buckets, positions: fixed row meaning
    return None


def save_state(model: tf.keras.Model, transform_dir: str, model_artifact_dir: str) -> str:
    """Writes ``<model artifact>/warmstart/``; returns its path."""
    state = os.path.join(model_artifact_dir, STATE_DIR)
    tf.io.gfile.makedirs(os.path.join(state, VOCAB_DIR))
    variables = model.trainable_variables
    keys = _keys(variables)
    save_npz(os.path.join(state, VARIABLES_FILE), *[v.numpy() for v in variables])
    tft_out = tft.TFTransformOutput(transform_dir)
    vocabs = {}
    for key in keys:
        name = vocabulary_of(key)
        if name and name not in vocabs:
            copy_file(tft_out.vocabulary_file_by_name(name), os.path.join(state, VOCAB_DIR, name))
            vocabs[name] = name
    write_json(os.path.join(state, INDEX_FILE),
               {"variables": keys, "vocabularies": sorted(vocabs), "oov_buckets": F.OOV_BUCKETS}, indent=1)
    return state


def _read_vocab(path: str) -> list[bytes]:
    with tf.io.gfile.GFile(path, "rb") as fh:
        return [line.rstrip(b"\n") for line in fh]


def _artifact_dirs(base_model: str) -> tuple[str, str]:
    """Where a base model's own files may be: the path TFX passes (``<artifact>/Format-Serving``) and its parent."""
    return base_model, os.path.dirname(base_model.rstrip("/"))


def state_dir_of(base_model: str | None) -> str | None:
    """The warm-start state of a base model given as TFX passes it (``<artifact>/Format-Serving``)."""
    if not base_model:
        return None
    for candidate in _artifact_dirs(base_model):
        path = os.path.join(candidate, STATE_DIR)
        if tf.io.gfile.exists(os.path.join(path, INDEX_FILE)):
            return path
    return None


def base_metric(base_model: str, key: str):
    """``key`` of the base model's metrics.json (written beside its serving dir), or None."""
    for candidate in _artifact_dirs(base_model):
        path = os.path.join(candidate, METRICS_FILE)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as fh:
                return json.load(fh).get(key)
    return None


def _remap_rows(new: np.ndarray, old: np.ndarray, new_vocab: list[bytes], old_vocab: list[bytes],
                oov: int) -> tuple[np.ndarray, int]:
    """Rows laid out [padding, vocab..., OOV...]; copies known tokens' rows by token."""
    out = new.copy()
    old_index = {tok: i for i, tok in enumerate(old_vocab)}
    carried = 0
    for j, tok in enumerate(new_vocab):
        i = old_index.get(tok)
        if i is not None and 1 + i < len(old) and 1 + j < len(out):
            out[1 + j] = old[1 + i]
            carried += 1
    out[0] = old[0]
    if oov and len(old) >= oov + 1 and len(out) >= oov + 1:
        out[-oov:] = old[-oov:]
    return out, carried


def warm_start(model: tf.keras.Model, state_dir: str, transform_dir: str) -> dict:
    """Copies the base model's variables into ``model`` (already built); returns what was carried."""
    index = read_json(os.path.join(state_dir, INDEX_FILE))
    saved = load_npy(os.path.join(state_dir, VARIABLES_FILE))
    old = {k: saved[f"arr_{i}"] for i, k in enumerate(index["variables"])}
    tft_out = tft.TFTransformOutput(transform_dir)
    report = {"taken": True, "from": os.path.dirname(state_dir), "copied": 0, "remapped": {}, "skipped": []}
    vocab_cache: dict[str, tuple[list, list]] = {}
    for var, key in zip(model.trainable_variables, _keys(model.trainable_variables)):
        if key not in old:
            report["skipped"].append(f"{key}: not in the base model")
            continue
        before, current = old[key], var.numpy()
        vocab = vocabulary_of(key)
        if vocab and vocab in index["vocabularies"]:
            if before.shape[1:] != current.shape[1:]:
                report["skipped"].append(f"{key}: width {before.shape[1:]} -> {current.shape[1:]}")
                continue
            if vocab not in vocab_cache:
                vocab_cache[vocab] = (_read_vocab(tft_out.vocabulary_file_by_name(vocab)),
                                      _read_vocab(os.path.join(state_dir, VOCAB_DIR, vocab)))
            new_vocab, old_vocab = vocab_cache[vocab]
            value, carried = _remap_rows(current, before, new_vocab, old_vocab, int(index.get("oov_buckets", 0)))
            var.assign(value.astype(current.dtype))
            report["remapped"][key] = {"rows_carried": carried, "new_rows": len(new_vocab) - carried,
                                       "vocabulary": vocab}
        elif before.shape == current.shape:
            var.assign(before.astype(current.dtype))
            report["copied"] += 1
        else:
            report["skipped"].append(f"{key}: shape {before.shape} -> {current.shape}")
    return report


def maybe_warm_start(model: tf.keras.Model, build_batch, base_model: str | None, transform_dir: str,
                     warm_cfg, hp, label: str) -> tuple[dict, int]:
    """Builds ``model`` on one batch, then warm-starts it when enabled and a base model has state.

    ``warm_cfg``: trainer.warm_start (hparams.WarmStartConfig); ``hp``: the model's own
    hyper-parameters (``epochs``, ``learning_rate``). When warm, applies the warm
    learning rate to the compiled optimizer. Returns the report stored in metrics.json
    (``taken`` False with the reason otherwise) and the epochs to train.
    """
    build_batch()
    if not warm_cfg.enabled:
        log(f"{label}: cold start (trainer.warm_start.enabled is false)")
        return {"taken": False, "reason": "disabled in config"}, hp.epochs
    if base_model is None:
        log(f"{label}: cold start (no blessed model yet)")
        return {"taken": False, "reason": "no blessed base model"}, hp.epochs
    state = state_dir_of(base_model)
    if state is None:
        log(f"{label}: cold start (base model {base_model} has no warm-start state)")
        return {"taken": False, "reason": f"no {STATE_DIR}/ in base model"}, hp.epochs
    report = warm_start(model, state, transform_dir)
    rows = ", ".join(f"{v['vocabulary']}: {v['rows_carried']} carried / {v['new_rows']} new"
                     for v in report["remapped"].values())
    log(f"{label}: warm start from {report['from']}: {report['copied']} variables copied, {rows}"
        + (f"; {len(report['skipped'])} left fresh" if report["skipped"] else ""))
    if warm_cfg.learning_rate_scale != 1.0:
        model.optimizer.learning_rate.assign(hp.learning_rate * warm_cfg.learning_rate_scale)
    return report, warm_cfg.epochs if warm_cfg.epochs > 0 else hp.epochs
