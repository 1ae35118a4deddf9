"""The ops a SavedModel's graph uses, read from saved_model.pb without loading it (so a
process without ScaNN can check that a stock-ops export really holds no ScaNN op)."""

from __future__ import annotations

from pathlib import Path


def graph_ops(export_dir) -> set[str]:
    """Op names in the first meta graph, its nodes and every function of its library."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString((Path(export_dir) / "saved_model.pb").read_bytes())
    graph = sm.meta_graphs[0].graph_def
    return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


def scann_ops(export_dir) -> set[str]:
    """The ScaNN custom ops (Scann>...) the export needs: empty for a stock-ops export."""
    return {op for op in graph_ops(export_dir) if op.lower().startswith("scann")}
