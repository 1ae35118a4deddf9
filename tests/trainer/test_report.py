"""The retrieval evaluation table and its plain verdict lines (trainer/report.py), on hand-made
metrics.json contents, and the written report."""

import json

from trainer.report import retrieval_table, retrieval_verdicts, write_report


def _m(r100, ndcg, als=(0.25, 0.12), pop=(0.20, 0.10)):
    row = lambda r, n: {"recall@10": n, "recall@50": r / 2, "recall@100": r, "ndcg@10": n}
    m = {"model": row(r100, ndcg), "popularity": row(*pop)}
    if als is not None:
        m["als"] = row(*als) if isinstance(als, tuple) else als
    return m


def test_table_shows_ours_popularity_and_als():
    rows = retrieval_table(_m(0.30, 0.15))
    assert [r.split(" | ")[0] for r in rows[2:]] == ["| two-tower (ours)", "| popularity baseline",
                                                   "| ALS baseline (implicit)"]
    assert "| 0.2500 | 0.1200 |" in rows[4]
    # Written before the baseline existed: no ALS row; ALS unavailable: the row says why.
    assert len(retrieval_table(_m(0.30, 0.15, als=None))) == 4
    rows = retrieval_table(_m(0.30, 0.15, als={"unavailable": "als could not be fit: ValueError: x"}))
    assert "unavailable: als could not be fit: ValueError: x" in rows[4]


def test_verdicts_say_plainly_where_ours_loses_with_the_gap():
    assert retrieval_verdicts(_m(0.30, 0.15)) == [
        "ours beats or ties the popularity baseline and the ALS baseline (implicit) on Recall@100 and NDCG@10"]
    lines = retrieval_verdicts(_m(0.2470, 0.15, als=(0.2510, 0.12)))
    assert lines == ["OURS LOSES to the ALS baseline (implicit) on Recall@100: 0.2470 vs 0.2510 (-0.0040, 0.98x)"]
    lines = retrieval_verdicts(_m(0.18, 0.05))
    assert len(lines) == 4 and all(line.startswith("OURS LOSES") for line in lines)
    unavailable = retrieval_verdicts(_m(0.30, 0.15, als={"unavailable": "disabled by trainer.baseline.enabled: false"}))
    assert unavailable[0].startswith("ours beats or ties the popularity baseline on")
    assert "ALS baseline (implicit) unavailable (disabled by trainer.baseline.enabled: false)" in unavailable[1]


def test_report_carries_the_table_and_the_verdicts(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(_m(0.2470, 0.15, als=(0.2510, 0.12))))
    text = open(write_report(str(tmp_path / "report"), str(run), None, None)).read()
    assert "| ALS baseline (implicit) | 0.1200 | 0.1255 | 0.2510 | 0.1200 |" in text
    assert "- OURS LOSES to the ALS baseline (implicit) on Recall@100: 0.2470 vs 0.2510" in text
