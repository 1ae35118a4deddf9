"""Helpers shared by the index, serving and pipeline benchmarks.

Latency summaries, host description, JSON + Markdown report writing, the newest
pushed version of a model, neutral query inputs for the exported signatures, and
``build_tiny_serving``: a cheap serving layout (``<root>/<model>/1/``) trained on
the tiny generated dataset of tests/support/tiny_pipeline.py (for ``--smoke``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"


def latency_summary(ms: Sequence[float]) -> dict:
    """p50/p95/p99/mean (ms) of a list of per-request latencies in ms."""
    a = np.asarray(list(ms), dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def host_info() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "platform": platform.platform()}
    try:
        with open("/proc/meminfo") as fh:
            info["mem_total_gb"] = round(int(fh.readline().split()[1]) / 2**20, 1)
        with open("/proc/loadavg") as fh:
            info["loadavg_at_start"] = fh.read().split()[:3]
    except OSError:
        pass
    return info


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def md_table(columns: Sequence[str], rows: Iterable[Sequence], align_first_left: bool = True) -> str:
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join(["---" if align_first_left else "---:"] + ["---:"] * (len(columns) - 1)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, markdown: str, out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    js.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    md.write_text(markdown)
    return js, md


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o)}")


def newest_version(base: str | os.PathLike) -> Optional[Path]:
    """The highest numeric version directory holding saved_model.pb under a model base path."""
    base = Path(base)
    if not base.is_dir():
        return None
    versions = [p for p in base.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def tf_env() -> None:
    """Keras 2 for TFRS and quiet TensorFlow, before TensorFlow is imported."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# -- exported signatures ---------------------------------------------------------


def neutral_query_inputs(input_specs: Mapping, user_ids: Sequence[str], k: int | None = None,
                         candidates: Sequence[Sequence[str]] | None = None) -> dict:
    """numpy inputs for a query signature (recommend / query_embedding / score), user id only.

    ``input_specs``: {name: spec} where spec has ``dtype`` (tf.DType or a
    SignatureMeta TensorMeta). History is all "" (the model uses the stored one),
    context -1, user side features unknown ("" / NaN), exclude_history true.
    """
    from serving import names

    n = len(user_ids)
    out = {}
    for key, spec in input_specs.items():
        if key == names.USER_ID:
            out[key] = np.array([str(u).encode() for u in user_ids], dtype=object)
        elif key == names.K:
            out[key] = np.full(n, int(k or 10), np.int32)
        elif key == names.EXCLUDE_HISTORY:  # as the offline evaluation does
            out[key] = np.ones(n, bool)
        elif key == names.CANDIDATE_ITEM_IDS:
            out[key] = np.array([[str(c).encode() for c in row] for row in candidates], dtype=object)
        elif key == names.NUM_CANDIDATES:  # the one-call recommender's stage 1: k (or the candidates sent)
            out[key] = np.full(n, int(k or 10) if candidates is None else len(candidates[0]), np.int32)
        else:
            try:
                value = names.neutral_value(key, _is_float(spec))
            except KeyError:
                raise ValueError(f"no neutral value for signature input {key!r}") from None
            out[key] = _column(value, n, key in (names.HISTORY_ITEM_IDS, names.EXCLUDE_ITEM_IDS)
                               or key.startswith(names.FILTER_PREFIX))
    return out


def _column(value, n: int, ragged: bool) -> np.ndarray:
    """``value`` repeated for n rows: [n, 1] for the ragged string inputs (history, excludes, filters)."""
    if isinstance(value, str):
        col = np.full(n, value.encode(), dtype=object)
    elif isinstance(value, bool):
        col = np.full(n, value, bool)
    elif isinstance(value, int):
        col = np.full(n, value, np.int64)
    else:
        col = np.full(n, value, np.float32)
    return col.reshape(n, 1) if ragged else col


def _is_float(spec) -> bool:
    if hasattr(spec, "is_float"):
        return bool(spec.is_float)
    return bool(getattr(spec, "dtype").is_floating)


def signature_specs(concrete_fn) -> dict:
    """{input name: TensorSpec} of a loaded SavedModel signature."""
    return dict(concrete_fn.structured_input_signature[1])


def to_tensors(inputs: Mapping[str, np.ndarray]) -> dict:
    import tensorflow as tf

    return {k: tf.constant(v) for k, v in inputs.items()}


# -- tiny models for --smoke -----------------------------------------------------


def build_tiny_serving(root: str | os.PathLike, log=print) -> dict:
    """Trains 1-epoch retrieval and ranking models on the tiny generated dataset.

    Layout: ``<root>/serving/{retrieval_brute_force,ranking,retrieval}/1/`` (the ScaNN
    ``retrieval`` export via trainer.retrieval.index.build_scann_export) and the retrieval run
    dir ``<root>/run/retrieval`` with eval_queries.npy. Takes ~40-70 s on 2 cores.
    Returns {"serving_dir", "run_dir", "user_ids", "item_ids"}.
    """
    tf_env()
    import trainer  # noqa: F401  (Keras 2 before TensorFlow)
    from serving import names
    from tests.support.tiny_pipeline import build_tiny_pipeline
    from trainer.artifacts import EVAL_QUERIES_FILE
    from trainer.hparams import trainer_config
    from trainer.ranking import train as ranking_trainer
    from trainer.retrieval import train as retrieval_trainer
    from trainer.retrieval.index import build_scann_export

    root = Path(root)
    tiny = build_tiny_pipeline(str(root / "data"))
    serving = root / "serving"
    small = {"epochs": 1, "batch_size": 64}
    bf = serving / names.RETRIEVAL_BRUTE_FORCE_MODEL / "1"
    run = root / "run" / "retrieval"
    retrieval_trainer.train_and_export(tiny.examples_uri, tiny.transform_dir, str(bf), str(run), tiny.side_features,
                                       tiny.history_length, trainer_config({"retrieval": small}))
    ranking_trainer.train_and_export(tiny.examples_uri, tiny.transform_dir, str(serving / names.RANKING_MODEL / "1"),
                                     str(root / "run" / "ranking"), tiny.side_features, tiny.history_length,
                                     trainer_config({"ranking": small}))
    queries = np.load(run / EVAL_QUERIES_FILE)
    import tensorflow as tf

    n = int(tf.saved_model.load(str(bf)).candidate_embeddings.shape[0])
    build_scann_export(str(bf), str(serving / names.RETRIEVAL_MODEL / "1"), queries, max_k=10, fetch_k=n,
                       recall_floor=0.0)
    log(f"[bench] tiny serving layout in {serving}")
    return {"serving_dir": str(serving), "run_dir": str(run), "user_ids": list(tiny.user_ids),
            "item_ids": list(tiny.item_ids)}
