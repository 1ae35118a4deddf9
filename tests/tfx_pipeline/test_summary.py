"""The run summary (tfx_pipeline/summary.py) on hand-made artifacts: ALS beside ours and
popularity, a plain line where ours loses, and the retrieval gate's reasons."""

import json

from tfx_pipeline import component_ids as ids
from tfx_pipeline.config import load_config
from trainer.gate import decide
from trainer.hparams import GateConfig


def test_summary_prints_als_the_loss_and_the_gate_reasons(tmp_path, capsys):
    from tfx_pipeline.summary import print_summary

    cfg = load_config("configs/implicit_demo.yaml", {"pipeline_root": str(tmp_path / "run"),
                                                      "serving_base_path": str(tmp_path / "serving")})
    row = lambda r, n: {"recall@10": n, "recall@50": r, "recall@100": r, "ndcg@10": n}
    metrics = {"model": row(0.2470, 0.15), "popularity": row(0.20, 0.10), "als": row(0.2510, 0.12)}
    run = cfg.root / "artifacts" / ids.RETRIEVAL_TRAINER / "model_run" / "7"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    blessing = cfg.root / "artifacts" / ids.RETRIEVAL_GATE / "blessing" / "8"
    blessing.mkdir(parents=True)
    (blessing / "NOT_BLESSED").write_text(json.dumps(decide("retrieval", metrics, None, GateConfig())))
    out = print_summary(cfg)
    printed = capsys.readouterr().out
    assert out["retrieval"]["als"] == metrics["als"]
    assert "| ALS baseline (implicit) | 0.1200 | 0.2510 | 0.2510 | 0.1200 |" in printed
    assert "OURS LOSES to the ALS baseline (implicit) on Recall@100: 0.2470 vs 0.2510 (-0.0040, 0.98x)" in printed
    assert f"[gate] {ids.RETRIEVAL_GATE}: NOT BLESSED" in printed
    assert ("- lift_over_baseline_recall_at_100: recall@100 0.2470 < 1.0 x ALS 0.2510: "
            "the model loses to the ALS baseline") in printed
    assert "beyond accuracy" not in printed  # a metrics.json without the beyond-accuracy keys
    # The report: Markdown and HTML, both printed, with the gate decision read above.
    assert f"[report] {out['report']}" in printed and f"[report] {out['report_html']}" in printed
    assert out["gates"][ids.RETRIEVAL_GATE]["blessed"] is False
    page = open(out["report_html"]).read()
    assert '<td class="bad">NOT BLESSED</td>' in page and "the model loses to the ALS baseline" in page


def test_summary_prints_the_beyond_accuracy_line(tmp_path, capsys):
    from tests.trainer.test_report import _beyond, _m
    from tfx_pipeline.summary import print_summary

    cfg = load_config("configs/implicit_demo.yaml", {"pipeline_root": str(tmp_path / "run"),
                                                      "serving_base_path": str(tmp_path / "serving")})
    run = cfg.root / "artifacts" / ids.RETRIEVAL_TRAINER / "model_run" / "3"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(_beyond(_m(0.30, 0.15))))
    print_summary(cfg)
    printed = capsys.readouterr().out
    assert ("  beyond accuracy @10: coverage ours 0.3100 / popularity 0.0100 / ALS 0.2000; tail share ours 0.0200 / "
            "popularity 0.0000 / ALS 0.0100 (relevant items 0.3000); cold users (10, <= 5 train events) Recall@10 "
            "ours 0.1000 / popularity 0.1000 / ALS 0.1000 (report: slices, fairness)") in printed


def test_summary_says_whether_the_one_call_models_were_built(tmp_path, capsys):
    from tfx_pipeline.summary import print_summary

    cfg = load_config("configs/implicit_demo.yaml", {"pipeline_root": str(tmp_path / "run"),
                                                      "serving_base_path": str(tmp_path / "serving")})
    blessing = cfg.root / "artifacts" / ids.RECOMMENDER_BUILDER / "blessing" / "9"
    blessing.mkdir(parents=True)
    (blessing / "NOT_BLESSED").write_text(json.dumps({"blessed": False,
                                                      "parts": {"retrieval": True, "ranking": False}}))
    print_summary(cfg)
    assert (f"[recommender] {ids.RECOMMENDER_BUILDER}: one-call models NOT built: the ranking model(s) were "
            f"not blessed") in capsys.readouterr().out
    newer = blessing.parent / "10"
    newer.mkdir()
    (newer / "BLESSED").write_text(json.dumps({"blessed": True, "parts": {"retrieval": True, "ranking": True}}))
    print_summary(cfg)
    assert f"[recommender] {ids.RECOMMENDER_BUILDER}: one-call models built, BLESSED" in capsys.readouterr().out
