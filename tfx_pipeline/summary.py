"""What a run produced, printed for people: evaluation tables (retrieval: ours, popularity
and ALS, with a plain line wherever ours loses to a baseline, and one beyond-accuracy line:
coverage, tail share, cold users' recall), verdicts (the gates', and whether the one-call models
were built), index recall, pushes; then the report (trainer/report.py: report.md and the
self-contained report.html, with the gate decisions read here and the ranking Evaluator's
per-slice metrics from its evaluation artifact)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tfx_pipeline import component_ids as ids
from tfx_pipeline.config import PipelineConfig
from trainer.artifacts import METRICS_FILE


def latest(root: Path, component: str, output: str) -> str | None:
    base = root / "artifacts" / component / output
    if not base.is_dir():
        return None
    ids = sorted((int(p.name) for p in base.iterdir() if p.name.isdigit()), reverse=True)
    return str(base / str(ids[0])) if ids else None


def gate_decision(blessing: str, evaluation: str | None = None) -> dict:
    """A gate's blessing artifact: {"blessed": bool, "reasons": [str], "uri": the artifact}. The
    reasons: the retrieval gate's decision JSON; for TFMA's empty marker file, the validation
    result in ``evaluation`` (the same Evaluator's evaluation artifact; trainer/gate.py
    ``ranking_gate_reasons``), or a line saying why it could not be read."""
    blessed = os.path.exists(os.path.join(blessing, "BLESSED"))
    decision = os.path.join(blessing, "BLESSED" if blessed else "NOT_BLESSED")
    reasons: list = []
    if os.path.isfile(decision) and os.path.getsize(decision):
        try:
            with open(decision) as fh:
                reasons = list(json.load(fh).get("reasons", []))
        except (ValueError, AttributeError, TypeError):  # not the gate's JSON (e.g. TFMA's own marker file)
            reasons = []
    if evaluation and not reasons:
        from trainer.gate import ranking_gate_reasons

        try:
            reasons = ranking_gate_reasons(evaluation)
        except Exception as e:  # noqa: BLE001 - the verdict is still shown without its reasons
            reasons = [f"TFMA validation result unreadable ({type(e).__name__}: {e}) in {evaluation}"]
    return {"blessed": blessed, "reasons": reasons, "uri": blessing}


def print_summary(cfg: PipelineConfig) -> dict:
    from trainer.report import beyond_accuracy_line, ranking_table, retrieval_table, retrieval_verdicts, write_report
    from trainer.report_html import HTML_FILE

    root = cfg.root
    out: dict = {}
    retrieval_run = latest(root, ids.RETRIEVAL_TRAINER, "model_run")
    ranking_run = latest(root, ids.RANKING_TRAINER, "model_run")
    scann = latest(root, ids.INDEX_BUILDER, "scann_model")
    index_report = os.path.join(scann, "index_report.json") if scann else None
    for label, run, table in (("retrieval", retrieval_run, retrieval_table), ("ranking", ranking_run, ranking_table)):
        path = os.path.join(run, METRICS_FILE) if run else None
        if path and os.path.exists(path):
            with open(path) as fh:
                metrics = json.load(fh)
            out[label] = metrics
            print(f"\n[eval] {label} on the eval split ({cfg.examples.split.strategy} split):")
            print("\n".join("  " + r for r in table(metrics)))
            for line in retrieval_verdicts(metrics) if label == "retrieval" else []:
                print("  " + line)
            beyond = beyond_accuracy_line(metrics) if label == "retrieval" else None
            if beyond:
                print(f"  beyond accuracy {beyond} (report: slices, fairness)")
            ws = metrics.get("warm_start") or {}
            if ws.get("taken"):
                rows = ", ".join(f"{v['vocabulary']} {v['rows_carried']} carried / {v['new_rows']} new"
                                 for v in ws["remapped"].values())
                print(f"  warm start from {ws['from']}: {rows}")
            elif ws:
                print(f"  cold start: {ws.get('reason')}")
    gates: dict = {}  # printed here, and shown in the report
    evaluation = latest(root, ids.RANKING_GATE, "evaluation")  # TFMA's output: the ranking gate's reasons
    for gate in (ids.RETRIEVAL_GATE, ids.RANKING_GATE):
        blessing = latest(root, gate, "blessing")
        if blessing:
            gates[gate] = decision = gate_decision(blessing, evaluation if gate == ids.RANKING_GATE else None)
            print(f"[gate] {gate}: {'BLESSED' if decision['blessed'] else 'NOT BLESSED'} ({blessing})")
            for r in decision["reasons"]:
                print(f"  - {r}")
    composed = latest(root, ids.RECOMMENDER_BUILDER, "blessing")
    if composed:  # the one-call models: built and blessed only when both parts were blessed
        built = os.path.exists(os.path.join(composed, "BLESSED"))
        try:
            with open(os.path.join(composed, "BLESSED" if built else "NOT_BLESSED")) as fh:
                parts = json.load(fh).get("parts", {})
        except (OSError, ValueError, AttributeError):
            parts = {}
        refused = [kind for kind, ok in parts.items() if not ok]
        why = f": the {' and '.join(refused)} model(s) were not blessed" if refused else ""
        said = f"one-call models {'built, BLESSED' if built else 'NOT built'}{why}"
        gates[ids.RECOMMENDER_BUILDER] = {"blessed": built, "reasons": [said], "uri": composed}
        print(f"[recommender] {ids.RECOMMENDER_BUILDER}: {said} ({composed})")
    out["gates"] = gates
    if evaluation:
        print(f"[gate] RankingGate is TFMA's Evaluator; metrics and validation result: {evaluation}")
    if index_report and os.path.exists(index_report):
        with open(index_report) as fh:
            idx = json.load(fh)
        out["index"] = idx
        print(f"[index] ScaNN recall@10 vs exact search: {idx['recall@10']:.4f} (floor {idx['recall_floor']}) "
              f"over {idx['num_candidates']:,} candidates")
    if retrieval_run or ranking_run:
        report = write_report(str(root / "report"), retrieval_run, ranking_run, index_report, gates,
                              latest(root, ids.STATISTICS_GEN, "statistics"), ranking_evaluation=evaluation)
        out["report"] = report
        out["report_html"] = os.path.join(os.path.dirname(report), HTML_FILE)
        print(f"[report] {report}")
        print(f"[report] {out['report_html']} (self-contained: open it in a browser, offline)")
    serving = cfg.serving_root
    if serving.is_dir():
        for model in sorted(p for p in serving.iterdir() if p.is_dir()):
            versions = sorted(v.name for v in model.iterdir() if v.name.isdigit())
            print(f"[push] {model.name}: versions {versions} under {model}")
    return out
