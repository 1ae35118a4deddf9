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


def _beyond(m: dict, als: bool = True) -> dict:
    """``m`` with hand-made "beyond_accuracy" and "slices" entries (K = 10 only)."""
    models = ["model", "popularity"] + (["als"] if als else [])
    for name, p in zip(models, (0.05, 0.03, 0.04)):
        m[name].update({"precision@10": p, "f1@10": p + 0.01, "mrr@10": p + 0.1, "hit_rate@10": p + 0.3})
    per = lambda cov, tail: {"coverage@10": cov, "novelty@10": 9.5, "diversity_embedding@10": 0.8,
                             "diversity_feature@10": 0.6, "mean_popularity@10": 1200.0, "popularity_ratio@10": 2.5,
                             "head_share@10": 0.5, "torso_share@10": 0.5 - tail, "tail_share@10": tail}
    m["beyond_accuracy"] = {"model": per(0.31, 0.02), "popularity": per(0.01, 0.0),
                            "truth": {"truth_popularity": 480.0, "truth_head_share": 0.3, "truth_torso_share": 0.4,
                                      "truth_tail_share": 0.3},
                            "num_users": 30, "params": {"ks": [10], "report_k": 10, "item_feature": "item_genres",
                                                        "head_share": 0.5, "tail_share": 0.8}}
    if als:
        m["beyond_accuracy"]["als"] = per(0.2, 0.01)
    group = lambda n, r: {"num_users": n, **{x: {"recall@10": r, "ndcg@10": r / 2} for x in models}}
    m["slices"] = {
        "user_activity": {"threshold": 5, "groups": {"cold": group(10, 0.1), "warm": group(20, 0.2)}},
        "item_popularity": {"groups": {"head": group(25, 0.3), "torso": group(20, 0.1), "tail": group(8, 0.0)}},
        "user_feature:user_gender": {
            "groups": {"F": group(12, 0.15), "M": group(18, 0.18)}, "min_group_users": 10,
            "fairness": {x: {"recall@10": {"ratio": 1.2, "best": "M", "worst": "F"}} for x in models}},
    }
    return m


def test_beyond_accuracy_and_slice_tables():
    from trainer.report import beyond_accuracy_line, beyond_accuracy_table, slice_table

    m = _beyond(_m(0.30, 0.15))
    rows = beyond_accuracy_table(m)
    assert rows[0] == "| metric | ours | popularity | ALS | relevant items |"
    assert "| Precision@10 | 0.0500 | 0.0300 | 0.0400 |  |" in rows
    assert "| catalogue coverage@10 | 0.3100 | 0.0100 | 0.2000 |  |" in rows
    assert "| mean train popularity@10 | 1200.0 | 1200.0 | 1200.0 | 480.0 |" in rows
    assert "| tail items' share@10 | 0.0200 | 0.0000 | 0.0100 | 0.3000 |" in rows  # vs the truth's
    assert "| diversity@10, item_genres (Jaccard distance) | 0.6000 | 0.6000 | 0.6000 |  |" in rows
    rows = slice_table(m)
    assert rows[0] == ("| slice | group | users | Recall@10 ours | Recall@10 popularity | Recall@10 ALS | "
                       "NDCG@10 ours | NDCG@10 popularity | NDCG@10 ALS |")
    assert ("| activity (cold: <= 5 train events) | cold | 10 | 0.1000 | 0.1000 | 0.1000 | 0.0500 | 0.0500 "
            "| 0.0500 |") in rows
    assert "| relevant items' popularity | tail | 8 | 0.0000 | 0.0000 | 0.0000 | 0.0000 | 0.0000 | 0.0000 |" in rows
    assert rows[-1] == ("- fairness, user_gender: best / worst group Recall@10 (groups of >= 10 users): "
                        "ours 1.20 (M / F); popularity 1.20 (M / F); ALS 1.20 (M / F)")
    assert beyond_accuracy_line(m) == (
        "@10: coverage ours 0.3100 / popularity 0.0100 / ALS 0.2000; tail share ours 0.0200 / popularity 0.0000 / "
        "ALS 0.0100 (relevant items 0.3000); cold users (10, <= 5 train events) Recall@10 ours 0.1000 / "
        "popularity 0.1000 / ALS 0.1000")
    # ALS unavailable: no ALS column; a metrics.json from before these keys: no tables at all.
    no_als = _beyond(_m(0.30, 0.15, als={"unavailable": "disabled"}), als=False)
    assert beyond_accuracy_table(no_als)[0] == "| metric | ours | popularity | relevant items |"
    assert beyond_accuracy_table(_m(0.3, 0.15)) == [] and slice_table(_m(0.3, 0.15)) == []
    assert beyond_accuracy_line(_m(0.3, 0.15)) is None


def test_report_carries_the_beyond_accuracy_sections_only_when_there(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(_beyond(_m(0.30, 0.15))))
    text = open(write_report(str(tmp_path / "report"), str(run), None, None)).read()
    assert "### Beyond accuracy (K = 10)" in text and "### Slices (K = 10)" in text
    assert "| catalogue coverage@10 | 0.3100 | 0.0100 | 0.2000 |  |" in text
    (run / "metrics.json").write_text(json.dumps(_m(0.30, 0.15)))
    assert "Beyond accuracy" not in open(write_report(str(tmp_path / "report2"), str(run), None, None)).read()


def test_importance_says_which_rows_and_their_base_rmse(tmp_path):
    run = tmp_path / "ranking"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"model": {"rmse": 0.942, "auc": 0.80},
                                                  "baseline": {"rmse": 1.1, "auc": 0.6}}))
    (run / "feature_importance.json").write_text(json.dumps({"item_id": {"rmse_increase": 0.05, "auc_drop": 0.02}}))
    text = open(write_report(str(tmp_path / "r1"), None, str(run), None)).read()
    assert "Permutation feature importance (eval split):" in text  # a run without the sample file
    (run / "feature_importance_sample.json").write_text(json.dumps(
        {"rows": 20000, "max_rows": 20000, "selection": "the first rows of the eval split, in file order",
         "rmse": 0.995, "auc": 0.79, "seed": 42, "eval_rows": 200042}))
    text = open(write_report(str(tmp_path / "r2"), None, str(run), None)).read()
    assert ("Permutation feature importance on 20,000 of 200,042 eval rows (the first rows of the eval split, in "
            "file order): RMSE 0.9950, AUC 0.7900 on them vs 0.9420 / 0.8000 on the whole eval split") in text
    assert "| item_id | 0.0500 | 0.0200 |" in text


def test_no_evaluated_user_gives_no_beyond_accuracy_tables():
    from trainer.report import beyond_accuracy_line, beyond_accuracy_table

    m = _m(0.0, 0.0)
    m["beyond_accuracy"] = {"truth": {}, "num_users": 0, "params": {"ks": [10], "report_k": 10}}
    assert beyond_accuracy_table(m) == [] and beyond_accuracy_line(m) is None


def _run_with_curves(tmp_path, history: dict, metrics: dict):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "history.json").write_text(json.dumps(history))
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


# A retrieval history.json as trainer/skeleton.py writes it: Keras' loss / val_loss (the last batch's
# sum over its rows: 64 training rows, a partial validation batch of 10), the per-example series
# (trainer/training_logs.py PerExampleLoss), the validation recall and the gradient norms.
HISTORY = {
    "loss": [265.0, 250.0, 240.0], "val_loss": [23.0, 22.9, 22.95],
    "loss_per_example": [4.20, 3.95, 3.80], "val_loss_per_example": [4.30, 4.05, 4.10],
    "val_recall@100": [0.20, 0.2512, 0.2400],
    "grad_norm": [5.0, 4.0, 3.0], "grad_norm/query_tower": [3.0, 2.4, 1.8],
    "grad_norm/candidate_tower": [4.0, 3.2, 2.4],
    "loss_scale": {"reduction": "sum", "replicas": 1, "train_batch_rows": 64, "train_extra_negatives": 0,
                   "validation_rows": 138, "validation_batches": 3, "validation_batch_rows": 64,
                   "validation_last_batch_rows": 10, "validation_rows_used": 128, "per_example": "exact",
                   "how": "the in-batch softmax loss is a sum over a batch's rows: divided by the rows; validation "
                          "over its 2 full batch(es) of 64 rows (128 of 138 rows): the last batch, of 10 rows, "
                          "scores its rows against fewer candidates and is left out"}}
SELECTION = {"validation": True, "metric": "val_recall@100", "best_epoch": 2, "best_value": 0.2512, "refit": True,
             "epochs_run": 3}


def test_curves_put_train_and_validation_loss_per_example_on_one_scale():
    from trainer.report import curve_panels, selection_point

    m = {**_m(0.30, 0.15), "selection": SELECTION}
    assert selection_point(HISTORY, m) == ("val_recall@100", 2, 0.2512)
    panels = curve_panels(HISTORY, m)
    assert [(title, keys, scale) for title, keys, scale, _ in panels] == [
        ("loss per example", ["loss_per_example", "val_loss_per_example"], "linear"),
        ("validation recall@100 (selection)", ["val_recall@100"], "linear"),
        ("gradient norm (probe batch)", ["grad_norm", "grad_norm/query_tower", "grad_norm/candidate_tower"], "log")]
    loss, recall, grads = (caption for *_, caption in panels)
    assert "At the selected epoch 2: train 3.9500, validation 4.0500." in loss
    assert "(128 of 138 rows): the last batch, of 10 rows" in loss  # the partial batch, said, not hidden
    assert "LAST batch's loss, not plotted" in loss
    assert ("The star marks the selected epoch 2 (val_recall@100 0.2512); the exported model was then "
            "retrained") in recall
    assert "a sum over the probe batch's 64 rows" in grads and "(query_tower, candidate_tower)" in grads
    # No validation split: no selection panel; the recall of an old metrics.json is still found.
    no_val = {**HISTORY, "val_recall@100": [], "val_loss_per_example": []}
    assert selection_point(no_val, {"selection": {**SELECTION, "validation": False, "metric": None}}) == (None,) * 3
    assert selection_point(HISTORY, {}) == ("val_recall@100", None, None)


def test_curves_of_an_old_history_say_the_losses_are_not_on_one_scale():
    from trainer.report import curve_panels

    old = {k: HISTORY[k] for k in ("loss", "val_loss", "val_recall@100", "grad_norm")}
    (title, keys, scale, caption), *_ = curve_panels(old, {"selection": SELECTION})
    assert (title, keys, scale) == ("loss as Keras logged it", ["loss", "val_loss"], "log")
    assert "NOT on one scale" in caption and "has no loss_per_example" in caption
    # Ranking: selected on Keras' val_loss, its heads' metrics in their own panel.
    ranking = {"loss": [0.9, 0.8], "val_loss": [0.95, 0.9], "loss_per_example": [0.91, 0.82],
               "val_loss_per_example": [0.93, 0.88], "rmse": [1.0, 0.95], "auc": [0.7, 0.75],
               "val_rmse": [1.02, 0.97], "val_auc": [0.69, 0.72], "grad_norm": [1.0, 0.5],
               "loss_scale": {"reduction": "mean", "per_example": "exact", "how": "the loss is a mean"}}
    panels = curve_panels(ranking, {"selection": {**SELECTION, "metric": "val_loss", "best_value": 0.9,
                                                  "refit": False}})
    assert [keys for _, keys, _, _ in panels] == [["loss_per_example", "val_loss_per_example"], ["val_loss"],
                                                  ["rmse", "auc", "val_rmse", "val_auc"], ["grad_norm"]]
    assert "the last validation batch's loss, not a mean over the validation split" in panels[1][3]
    assert "whose weights early stopping restored for the exported model" in panels[1][3]
    # The sequence objective: no validation batches, a mean over targets (approximate per example).
    sequence = {"loss": [2.3, 2.1], "loss_per_example": [3.1, 2.2], "val_recall@100": [0.3, 0.4], "grad_norm": [5, 4],
                "loss_scale": {"reduction": "mean_over_targets", "per_example": "approximate", "how": "a mean"}}
    (title, keys, _, caption), *_ = curve_panels(sequence, {"selection": SELECTION})
    assert keys == ["loss_per_example"] and caption.startswith("Loss per example (approximate, linear)")
    assert "no validation loss: the run had no validation batches" in caption
    assert "At the selected epoch 2: train 2.2000." in caption


def test_report_shows_the_curves_with_their_captions(tmp_path):
    run = _run_with_curves(tmp_path, HISTORY, {**_m(0.30, 0.15), "selection": SELECTION})
    out = tmp_path / "report"
    text = open(write_report(str(out), str(run), None, None)).read()
    assert "![retrieval curves](retrieval_curves.png)" in text and (out / "retrieval_curves.png").is_file()
    assert "- (1) loss per example: Loss per example (train and validation on one scale, linear)" in text
    assert "At the selected epoch 2: train 3.9500, validation 4.0500." in text
    assert "- (2) validation recall@100 (selection): val_recall@100 per epoch (linear scale)" in text
    assert "- (3) gradient norm (probe batch): Gradient L2 norm" in text
    assert "- The dotted line in every panel marks the selected epoch (2)." in text
    page = (out / "report.html").read_text()
    assert page.count("<figcaption>") == 1 and "<p>(2) validation recall@100 (selection): val_recall@100 per" in page
    assert "At the selected epoch 2: train 3.9500, validation 4.0500." in page


# --- The ranking per-slice table (the RankingGate's TFMA metrics; a real run in
# tests/tfx_pipeline/test_ranking_gate_tfma.py) ------------------------------------------------

SLICES = [{"feature": None, "value": None, "examples": 1234.0, "rmse": 0.95, "auc": 0.71},
          {"feature": "user_gender", "value": "F", "examples": 400.0, "rmse": 1.01, "auc": 0.69},
          {"feature": "user_gender", "value": "M", "examples": 834.0, "rmse": 0.92, "auc": None}]


def test_ranking_slice_table_has_each_slices_examples_rmse_and_auc():
    from trainer.report import ranking_slice_rows

    table = ranking_slice_rows(SLICES)
    assert table.header == ["slice", "value", "examples", "RMSE (rating)", "AUC (engagement)"]
    assert [[c.text for c in row] for row in table.rows] == [
        ["overall (gated)", "", "1,234", "0.9500", "0.7100"], ["user_gender", "F", "400", "1.0100", "0.6900"],
        ["user_gender", "M", "834", "0.9200", "n/a"]]


def test_report_shows_the_ranking_slices_or_why_not(tmp_path, monkeypatch):
    import trainer.report as report

    run = tmp_path / "ranking_run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"model": {"rmse": 0.95, "auc": 0.71},
                                                  "baseline": {"rmse": 1.1, "auc": 0.5}}))
    monkeypatch.setattr(report, "load_ranking_slices", lambda uri: SLICES)
    out = tmp_path / "report"
    text = open(write_report(str(out), None, str(run), None, ranking_evaluation="/runs/x/evaluation/7")).read()
    assert "### Slices (RankingGate, TFMA)" in text and "`/runs/x/evaluation/7`" in text
    assert "| overall (gated) |  | 1,234 | 0.9500 | 0.7100 |" in text
    assert "| user_gender | M | 834 | 0.9200 | n/a |" in text
    assert "The gate's thresholds apply to the overall slice only" in text
    page = (out / "report.html").read_text()
    assert "<td>user_gender</td><td>F</td>" in page and "ranking evaluation (TFMA)" in page
    # No evaluation artifact: no slice section; an unreadable one: a line saying why.
    assert "Slices (RankingGate" not in open(write_report(str(out), None, str(run), None)).read()

    def unreadable(uri):
        raise OSError("no metrics file")

    monkeypatch.setattr(report, "load_ranking_slices", unreadable)
    text = open(write_report(str(out), None, str(run), None, ranking_evaluation="/e")).read()
    assert "per-slice metrics unavailable (OSError: no metrics file); evaluation: `/e`" in text
    monkeypatch.setattr(report, "load_ranking_slices", lambda uri: [])
    text = open(write_report(str(out), None, str(run), None, ranking_evaluation="/e")).read()
    assert "per-slice metrics unavailable (no metrics in the evaluation)" in text
