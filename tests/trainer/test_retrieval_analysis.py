"""The beyond-accuracy metrics and slices through the real retrieval evaluation (a tiny run,
tests/trainer/conftest.py ``trained_retrieval``): their keys in metrics.json, their consistency
with the overall figures, and the report that shows them."""

import json

import numpy as np
import pytest
import tensorflow as tf

MODELS = ("model", "popularity", "als")


@pytest.fixture(scope="module")
def saved(trained_retrieval):
    out, metrics, _ = trained_retrieval
    return out, json.loads((out / "model" / "metrics.json").read_text())


def _weighted(groups: dict, model: str, key: str) -> float:
    n = sum(g["num_users"] for g in groups.values() if model in g)
    return sum(g["num_users"] * g[model][key] for g in groups.values() if model in g) / n


def test_new_keys_beside_the_old_ones(saved):
    out, m = saved
    assert {"model", "popularity", "als", "num_eval_users", "beyond_accuracy", "slices"} <= set(m)
    for name in MODELS:  # the accuracy figures of every model gained precision, F1 and MRR
        assert {"recall@10", "ndcg@10", "hit_rate@10", "precision@10", "f1@10", "mrr@10"} <= set(m[name])
        assert m[name]["precision@10"] <= m[name]["hit_rate@10"] and m[name]["mrr@10"] <= m[name]["hit_rate@10"]
    ba = m["beyond_accuracy"]
    assert set(MODELS) <= set(ba) and ba["num_users"] == m["num_eval_users"]
    assert ba["params"]["item_feature"] == "item_genres"
    num_items = int(tf.saved_model.load(str(out / "model" / "Format-Serving")).candidate_ids.shape[0])
    assert sum(ba["params"]["bucket_items"].values()) == num_items
    for name in MODELS:
        e = ba[name]
        assert e["head_share@10"] + e["torso_share@10"] + e["tail_share@10"] == pytest.approx(1.0)
        assert 10 / num_items <= e["coverage@10"] <= e["coverage@50"] <= 1.0
        assert 0.0 < e["diversity_embedding@10"] <= 2.0 and 0.0 <= e["diversity_feature@10"] <= 1.0
    # Popularity recommends each user the most popular unseen items: no model's lists are more popular.
    assert ba["popularity"]["mean_popularity@10"] >= max(ba["model"]["mean_popularity@10"],
                                                         ba["als"]["mean_popularity@10"])
    assert ba["popularity"]["novelty@10"] <= min(ba["model"]["novelty@10"], ba["als"]["novelty@10"])


def test_slices_partition_the_users_and_average_to_the_overall_figures(saved):
    _, m = saved
    sl = m["slices"]
    for name in ("user_activity", "user_feature:user_gender", "user_feature:user_occupation", "user_feature:user_age"):
        groups = sl[name]["groups"]
        assert sum(g["num_users"] for g in groups.values()) == m["num_eval_users"], name
        for model in MODELS:
            for key in ("recall@10", "ndcg@10", "precision@10", "mrr@10"):
                assert _weighted(groups, model, key) == pytest.approx(m[model][key], abs=1e-12), (name, model, key)
            nov = _weighted(groups, model, "novelty@10")
            assert nov == pytest.approx(m["beyond_accuracy"][model]["novelty@10"], abs=1e-9), (name, model)
    act = sl["user_activity"]
    assert act["groups"]["cold"]["num_users"] >= 1 and act["threshold"] >= 0
    # Item buckets: each user counted once per bucket they have truth in; the tail is never
    # easier for popularity than the head.
    items = sl["item_popularity"]["groups"]
    assert set(items) == {"head", "torso", "tail"}
    assert items["head"]["popularity"]["recall@10"] >= items["tail"]["popularity"]["recall@10"]
    # Fairness: the ratio of the best and worst eligible group's recall.
    fair = sl["user_feature:user_gender"]["fairness"]["model"]["recall@10"]
    groups = {g: e["model"]["recall@10"] for g, e in sl["user_feature:user_gender"]["groups"].items()
              if e["num_users"] >= 2}
    assert fair["ratio"] == pytest.approx(max(groups.values()) / min(groups.values()))
    assert groups[fair["best"]] == max(groups.values()) and groups[fair["worst"]] == min(groups.values())


def test_report_shows_beyond_accuracy_and_slices(saved, tmp_path):
    from trainer.report import beyond_accuracy_line, write_report

    out, m = saved
    text = open(write_report(str(tmp_path / "report"), str(out / "run"), None, None)).read()
    assert "### Beyond accuracy (K = 10)" in text and "### Slices (K = 10)" in text
    assert "| metric | ours | popularity | ALS | relevant items |" in text
    assert f"| catalogue coverage@10 | {m['beyond_accuracy']['model']['coverage@10']:.4f} |" in text
    assert "| diversity@10, item_genres (Jaccard distance) |" in text
    cold = m["slices"]["user_activity"]["groups"]["cold"]
    assert (f"| activity (cold: <= {m['slices']['user_activity']['threshold']} train events) | cold | "
            f"{cold['num_users']} | {cold['model']['recall@10']:.4f} |") in text
    assert "| relevant items' popularity | tail |" in text
    assert "- fairness, user_gender: best / worst group Recall@10" in text
    assert "cold users" in beyond_accuracy_line(m)
