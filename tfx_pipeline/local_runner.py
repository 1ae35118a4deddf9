"""Runs the pipeline on this machine: LocalDagRunner, SQLite MLMD, Beam DirectRunner."""

from __future__ import annotations

import logging
import time
from typing import Optional

from absl import logging as absl_logging
from tfx import v1 as tfx

from tfx_pipeline.config import PipelineConfig
from tfx_pipeline.data.datasets import ensure_dataset
from tfx_pipeline.wiring.pipeline import ALL_STAGES, create_pipeline


def run_local(cfg: PipelineConfig, stage: str = ALL_STAGES, beam_pipeline_args: Optional[list[str]] = None,
              enable_cache: bool = True, verbose: bool = False) -> list[dict]:
    """Runs the pipeline; returns one summary row per component execution of this run."""
    ensure_dataset(cfg)
    cfg.root.mkdir(parents=True, exist_ok=True)
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)
    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose else logging.WARNING)
    pipeline = create_pipeline(cfg, stage=stage, beam_pipeline_args=beam_pipeline_args,
                               enable_cache=enable_cache, metadata_path=str(cfg.metadata_path))
    print(f"[pipeline] {cfg.name}: {len(pipeline.components)} components, root {cfg.root}", flush=True)
    started = time.time()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    rows = executions(cfg.metadata_path, started)
    for r in rows:
        outs = ", ".join(f"{k}={v}" for k, v in r["outputs"].items())
        print(f"[pipeline] {r['component']:<22} {r['state']:<8} {outs}", flush=True)
    print(f"[pipeline] done in {time.time() - started:.0f}s; ML Metadata: {cfg.metadata_path}", flush=True)
    return rows


def executions(metadata_path, since_s: float) -> list[dict]:
    """Per execution since ``since_s``: node id, state, output URIs, start / end (epoch s), duration."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    conn = metadata_store_pb2.ConnectionConfig()
    conn.sqlite.filename_uri = str(metadata_path)
    store = metadata_store.MetadataStore(conn)
    states = metadata_store_pb2.Execution.State
    node_type_id = store.get_context_type("node").id
    rows = []
    for ex in sorted(store.get_executions(), key=lambda e: e.create_time_since_epoch):
        if ex.create_time_since_epoch < since_s * 1000 - 1000:
            continue
        # The node context ("<pipeline>.<node id>") names the component instance.
        node = next((c.name.split(".", 1)[-1] for c in store.get_contexts_by_execution(ex.id)
                     if c.type_id == node_type_id), "?")
        outputs = {}
        events = store.get_events_by_execution_ids([ex.id])
        out_ids = [e.artifact_id for e in events if e.type == e.OUTPUT]
        for a in store.get_artifacts_by_id(out_ids):
            key = next((e.path.steps[0].key for e in events if e.artifact_id == a.id and e.path.steps), "out")
            outputs[key] = a.uri
        start, end = ex.create_time_since_epoch / 1000, ex.last_update_time_since_epoch / 1000
        rows.append({"component": node, "state": states.Name(ex.last_known_state), "outputs": outputs,
                     "start": start, "end": end, "seconds": round(end - start, 3)})
    return rows
