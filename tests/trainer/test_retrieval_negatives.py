"""The per-event objective's options on real (tiny) training runs: the catalogue softmax
(``negatives: catalogue``) and future-window positives (``target_window``).

On the sequential tiny log (tests/support/tiny_pipeline.py ``sequential_tables``: order is all
there is to learn, popularity is flat), each option must learn what popularity cannot."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def sequential_log(tmp_path_factory):
    from tests.support.tiny_pipeline import build_tiny_pipeline, sequential_tables

    return build_tiny_pipeline(str(tmp_path_factory.mktemp("sequential_log")), make_tables=sequential_tables)


def _train(tiny, root, capsys, **options):
    from trainer.hparams import trainer_config
    from trainer.retrieval.train import train_and_export

    serving = os.path.join(root, "model", "Format-Serving")
    cfg = trainer_config({"retrieval": {"epochs": 8, "batch_size": 32, "history_encoder": "mean", "learning_rate": 0.01,
                                        "early_stopping_patience": 8, "use_user_id": False,
                                        "use_content_features": False, "use_context": False, **options},
                          "selection": {"retrieval_metric": "ndcg@10"}, "evaluation": {"enabled": False}})
    metrics = train_and_export(tiny.examples_uri, tiny.transform_dir, serving, os.path.join(root, "run"),
                               tiny.side_features, tiny.history_length, cfg)
    said = capsys.readouterr()
    return metrics, serving, said.out + said.err


@pytest.mark.parametrize("options", [{"negatives": "catalogue"}, {"target_window": 3},
                                     {"negatives": "catalogue", "target_window": 3}])
def test_options_train_export_and_learn_what_popularity_cannot(sequential_log, tmp_path, capsys, options):
    metrics, serving, log = _train(sequential_log, str(tmp_path), capsys, **options)
    assert ("softmax over the catalogue" in log) == (options.get("negatives") == "catalogue"), log[-2000:]
    assert ("positives from each user's next 3 events" in log) == ("target_window" in options)
    assert os.path.exists(os.path.join(serving, "saved_model.pb"))
    model, pop = metrics["model"], metrics["popularity"]
    assert model["ndcg@10"] > 2 * pop["ndcg@10"], (model, pop)


def test_a_catalogue_over_the_limit_falls_back_to_in_batch_and_says_so(sequential_log, tmp_path, capsys):
    _, _, log = _train(sequential_log, str(tmp_path), capsys, epochs=1, negatives="catalogue",
                       full_softmax_max_items=3)
    assert "negatives catalogue asked, but the catalogue has" in log and "in-batch softmax" in log
