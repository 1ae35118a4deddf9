"""The exposure chain end to end: served -> logged -> span -> the next run's ranking model.

A run trains the retrieval and ranking models on a tiny log and builds the one-call model
over them; the real model server (request logging on) serves it to the real client, one
Predict per user; `build_span` turns the server's request logs into a span's
exposures.csv (what each user was shown, at the rank shown); the next run reads that span's
exposures as the pipeline does (`load_exposures`) into its examples, and its ranking model,
trained on them as negatives, scores the shown-and-ignored items lower than the served
model did. Nothing is hand-written between the steps.
"""

from __future__ import annotations

import csv
import shutil
import time

import pytest

pytestmark = pytest.mark.e2e

K = 5


def _train(tiny_cfg, events, users, items, root, exposures=None, retrieval=True):
    """One run's data half and trainers; returns {kind: serving dir}."""
    from tests.support.tiny_pipeline import run_transform
    from tfx_pipeline.data.example_builder import build_examples
    from trainer.hparams import trainer_config
    from trainer.ranking.train import train_and_export as train_ranking
    from trainer.retrieval.train import train_and_export as train_retrieval

    ex, tr = str(root / "examples"), str(root / "transform")
    counts = build_examples(events, users, items, tiny_cfg, ex, exposures=exposures)
    run_transform(ex, tr, tiny_cfg.side_features(), str(root / "tft_tmp"))
    args = (tiny_cfg.side_features(), tiny_cfg.examples.history_length)
    cfg = trainer_config({"retrieval": {"epochs": 2, "batch_size": 64},
                          "ranking": {"epochs": 1, "batch_size": 128}})
    out = {}
    if retrieval:
        out["retrieval"] = str(root / "retrieval" / "Format-Serving")
        train_retrieval(ex, tr, out["retrieval"], str(root / "retrieval_run"), *args, cfg)
    out["ranking"] = str(root / "ranking" / "Format-Serving")
    metrics = train_ranking(ex, tr, out["ranking"], str(root / "ranking_run"), *args, cfg)
    return out, counts, metrics


def test_served_lists_become_the_next_runs_ranking_negatives(tmp_path):
    import numpy as np

    from serving import names
    from serving.client import RecommenderClient
    from serving.model_server import ModelServer, RequestLoggingOptions
    from tests.support.ranking_queries import pair_engagement
    from tests.support.tiny_pipeline import config, tables
    from tfx_pipeline.config import parse_config
    from tfx_pipeline.data.example_builder import EXPOSURES_SPLIT
    from tfx_pipeline.data.feedback import build_span
    from tfx_pipeline.data.tables import load_exposures
    from trainer import features as F
    from trainer.recommender.export import build

    events, users, items = tables(seed=2)
    # The log ends two hours before now: the served requests come right after it, as in the
    # daily loop (so the exposure rows' recency is the one the model trained on).
    events[F.TIMESTAMP] += int(time.time()) - 7200 - int(events[F.TIMESTAMP].max())
    tiny_cfg = config()

    # Run 1: trained, the one-call model built over its two exports, all three served.
    served, _, _ = _train(tiny_cfg, events, users, items, tmp_path / "run1")
    models = tmp_path / "models"
    shutil.copytree(served["retrieval"], models / names.RETRIEVAL_BRUTE_FORCE_MODEL / "1")
    shutil.copytree(served["ranking"], models / names.RANKING_MODEL / "1")
    build(str(models / names.RETRIEVAL_BRUTE_FORCE_MODEL / "1"), str(models / names.RANKING_MODEL / "1"),
          str(models / names.RECOMMENDER_BRUTE_FORCE_MODEL / "1"), names.RECOMMENDER_BRUTE_FORCE_MODEL,
          num_candidates=20)
    model_config = models / "models.config"
    model_config.write_text("model_config_list {\n" + "\n".join(
        f'  config {{ name: "{m}" base_path: "{models / m}" model_platform: "tensorflow" }}'
        for m in (names.RETRIEVAL_BRUTE_FORCE_MODEL, names.RANKING_MODEL, names.RECOMMENDER_BRUTE_FORCE_MODEL))
        + "\n}\n")

    logs = tmp_path / "logs"
    user_ids = list(users.index)
    with ModelServer(str(model_config), grpc_port=0, rest_port=None, metrics_port=None,
                     request_logging=RequestLoggingOptions(default_dir=str(logs))) as server:
        server.wait_until_available(120)
        with RecommenderClient(server.grpc_address, timeout_s=30,
                               retrieval_model=names.RETRIEVAL_BRUTE_FORCE_MODEL) as client:
            assert client.recommender_model == names.RECOMMENDER_BRUTE_FORCE_MODEL
            shown = {u: [r.item_id for r in client.recommend(u, k=K)] for u in user_ids}
        end = int(time.time())
    assert all(len(v) == K for v in shown.values())

    # The day's new events: one user clicked their first recommendation; nobody else acted.
    spans_cfg = parse_config({"name": "chain", "schema_dir": ".", "data": {
        "spans": {"base": str(tmp_path / "spans")},
        "events": {"path": "events.csv", "columns": {"user": "u", "item": "i", "timestamp": "t", "rating": "r"}}}})
    clicker, clicked = user_ids[0], shown[user_ids[0]][0]
    new_events = tmp_path / "new_events.csv"
    with open(new_events, "w", newline="") as f:
        csv.writer(f).writerows([["u", "i", "t", "r"], [clicker, clicked, end + 60, 5.0]])
    summary = build_span(spans_cfg, str(logs), new_events, tmp_path / "spans", 2, attribution_hours=1.0,
                         model=names.RECOMMENDER_BRUTE_FORCE_MODEL)
    assert summary["requests"] == len(user_ids) and summary["exposures"] == K * len(user_ids)

    # Run 2 reads the span's exposures as the pipeline does; the click is an event of its log.
    exposures = load_exposures(spans_cfg)
    assert sorted(zip(exposures[F.USER_ID], exposures[F.ITEM_ID])) == sorted(
        (u, i) for u, items_shown in shown.items() for i in items_shown)
    assert exposures["engaged"].sum() == 1
    events2 = events._append({F.USER_ID: clicker, F.ITEM_ID: clicked, F.TIMESTAMP: end + 60,
                              F.RATING_LABEL: 5.0}, ignore_index=True)
    nxt, counts, metrics = _train(tiny_cfg, events2, users, items, tmp_path / "run2", exposures=exposures,
                                  retrieval=False)
    ignored = exposures[exposures["engaged"] == 0]
    assert counts[EXPOSURES_SPLIT] == len(ignored) == K * len(user_ids) - 1
    assert metrics["num_exposure_negatives"] == len(ignored)
    assert metrics["num_train_examples"] == counts["train"]  # the baselines' rows: interactions only
    # The switch: the same examples with use_exposures off train on no exposure row.
    from trainer.hparams import trainer_config
    from trainer.ranking.train import train_and_export as train_ranking

    run2 = tmp_path / "run2"
    off = train_ranking(str(run2 / "examples"), str(run2 / "transform"), str(run2 / "off" / "Format-Serving"),
                        str(run2 / "off_run"), tiny_cfg.side_features(), tiny_cfg.examples.history_length,
                        trainer_config({"ranking": {"epochs": 1, "batch_size": 128, "use_exposures": False}}))
    assert off["num_exposure_negatives"] == 0

    # The model: what users were shown and ignored scores lower than the served model scored it.
    before = pair_engagement(served["ranking"], ignored[F.USER_ID], ignored[F.ITEM_ID])
    after = pair_engagement(nxt["ranking"], ignored[F.USER_ID], ignored[F.ITEM_ID])
    assert after.mean() < before.mean() - 0.05, (before.mean(), after.mean())
    assert np.mean(after < before) > 0.7, np.mean(after < before)
