"""Hand-derived checks of the beyond-accuracy metrics, the slices and the fairness ratios
(trainer/retrieval/beyond_accuracy.py, slices.py) and of Precision/F1/MRR
(trainer/retrieval/metrics.py) on a 3-user, 5-item example.

Catalogue a b c d e (columns 0..4); train interaction counts a 5, b 3, c 1, d 1, e 0
(N = 10, |I| = 5). Popularity buckets (head 50%, torso up to 80%): ranked a, b, c, d, e,
interactions before each 0, 5, 8, 9, 10 -> a head (0 < 5), b torso (5 < 8), c d e tail.
Self-information -log2((c + 1) / 15): a log2(15/6), b log2(15/4), c d log2(15/2), e log2(15).

Truth: u1 {b, c}, u2 {d}, u3 {a, e}; nothing seen. Lists (K = 2), ours:
u1 [b, a] (hit at rank 0), u2 [a, d] (hit at rank 1), u3 [a, b] (hit at rank 0).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trainer.retrieval import beyond_accuracy as ba, metrics as rm, slices

A, B, C, D, E = range(5)
ITEMS = ["a", "b", "c", "d", "e"]
COUNTS = np.array([5, 3, 1, 1, 0], dtype=np.float64)
OURS = np.array([[B, A], [A, D], [A, B]])
POP = np.array([[A, B], [A, B], [A, B]])  # the popularity ranking, for every user
EMB = np.array([[1, 0], [0, 1], [1, 1], [-1, 0], [0, 0]], dtype=np.float64)
GENRES = [["x"], ["x", "y"], ["y"], [], ["z"]]
I = {name: math.log2(15 / (c + 1)) for name, c in zip(ITEMS, COUNTS)}


@pytest.fixture
def task() -> rm.EvalTask:
    train = pd.DataFrame({"user_id": ["nobody"], "item_id": ["e"]})
    ev = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u3", "u3"], "item_id": ["b", "c", "d", "a", "e"]})
    t = rm.build_eval_task(train, ev, ITEMS)
    assert t.user_ids.tolist() == ["u1", "u2", "u3"] and t.seen.nnz == 0
    return t


@pytest.fixture
def items() -> ba.ItemContext:
    return ba.ItemContext(counts=COUNTS, buckets=ba.popularity_buckets(COUNTS, 0.5, 0.8), embeddings=EMB,
                          features=ba.feature_sets(GENRES))


def test_precision_f1_mrr_hit_rate(task):
    got = rm.evaluate_topk(task, OURS, ks=(1, 2), filter_seen=False)
    # @2: precision 1/2 each; recall 1/2, 1, 1/2; F1 1/2, 2*(1/2)*1/(3/2) = 2/3, 1/2; MRR 1, 1/2, 1.
    assert got["precision@2"] == pytest.approx(0.5)
    assert got["f1@2"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert got["mrr@2"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert got["hit_rate@2"] == pytest.approx(1.0)
    # @1: [b], [a], [a]: precision 1, 0, 1; recall 1/2, 0, 1/2; F1 2/3, 0, 2/3; MRR 1, 0, 1.
    assert got["precision@1"] == pytest.approx(2 / 3)
    assert got["f1@1"] == pytest.approx(4 / 9)
    assert got["mrr@1"] == pytest.approx(2 / 3)
    assert got["hit_rate@1"] == pytest.approx(2 / 3)
    # Precision divides by K even when the list is shorter: u2's list cut to one pad.
    short = rm.evaluate_topk(task, np.array([[B, -1], [-1, -1], [A, -1]]), ks=(2,), filter_seen=False)
    assert short["precision@2"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert short["mrr@2"] == pytest.approx(2 / 3)


def test_evaluate_and_rank_returns_the_lists_it_evaluated(task):
    scores = np.array([[4.0, 5, 0, 0, 0], [5, 0, 0, 4, 0], [5, 4, 0, 0, 0]])
    metrics, ranked = rm.evaluate_and_rank(task, lambda r: scores[r], ks=(1, 2))
    assert ranked.tolist() == OURS.tolist()
    assert metrics == rm.evaluate_scores(task, lambda r: scores[r], ks=(1, 2))
    assert metrics == rm.evaluate_topk(task, OURS, ks=(1, 2), filter_seen=False)


def test_seen_items_in_a_short_catalogue_become_pads():
    # u saw a, b, c of a 4-item catalogue: its top 3 has one unseen item, then two pads.
    train = pd.DataFrame({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"]})
    t = rm.build_eval_task(train, pd.DataFrame({"user_id": ["u"], "item_id": ["d"]}), ["a", "b", "c", "d"])
    _, ranked = rm.evaluate_and_rank(t, lambda r: np.array([[4.0, 3, 2, 1]]), ks=(3,))
    assert ranked.tolist() == [[3, -1, -1]]


def test_popularity_buckets_and_self_information():
    assert ba.popularity_buckets(COUNTS, 0.5, 0.8).tolist() == [ba.HEAD, ba.TORSO, ba.TAIL, ba.TAIL, ba.TAIL]
    # Ties keep catalogue order: 4 items of 1 interaction each: before 0, 1, 2, 3 of N = 4;
    # head < 2 -> first two; torso < 3.2 -> items 3, 4 (before 2 and 3); nothing in the tail.
    assert ba.popularity_buckets(np.ones(4), 0.5, 0.8).tolist() == [0, 0, 1, 1]
    assert ba.popularity_buckets(np.zeros(3)).tolist() == [ba.TAIL] * 3  # nothing seen: all tail
    info = ba.self_information(COUNTS)
    assert info.tolist() == pytest.approx([I[n] for n in ITEMS])
    assert info[E] == pytest.approx(math.log2(15))  # unseen item: finite, the largest
    with pytest.raises(ValueError, match="head_share"):
        ba.popularity_buckets(COUNTS, 0.8, 0.5)


def test_coverage_novelty_diversities_popularity_bias(task, items):
    per_user = ba.per_user_list_metrics(OURS, items, ks=(1, 2))
    truth = ba.per_user_truth_metrics(task.truth, items)
    got = ba.summarize(per_user, truth, OURS, 5, ks=(1, 2))
    # Coverage: @2 {a, b, d} of 5; @1 {b, a}.
    assert got["coverage@2"] == pytest.approx(3 / 5) and got["coverage@1"] == pytest.approx(2 / 5)
    # Novelty: u1 (b, a), u2 (a, d), u3 (a, b).
    assert got["novelty@2"] == pytest.approx(((I["a"] + I["b"]) + (I["a"] + I["d"]) / 2) / 3)
    assert got["novelty@1"] == pytest.approx((I["b"] + 2 * I["a"]) / 3)
    # Embedding diversity: cos(a, b) = 0 -> 1; cos(a, d) = -1 -> 2. (1 + 2 + 1) / 3; no pair at K = 1.
    assert got["diversity_embedding@2"] == pytest.approx(4 / 3)
    assert got["diversity_embedding@1"] is None
    # Genre diversity (Jaccard): a{x} b{x,y} 1 - 1/2; a{x} d{} 1 - 0/1. (1/2 + 1 + 1/2) / 3.
    assert got["diversity_feature@2"] == pytest.approx(2 / 3)
    # Popularity: lists (3 + 5)/2, (5 + 1)/2, (5 + 3)/2 -> 11/3; truth (3 + 1)/2, 1, (5 + 0)/2 -> 11/6.
    assert got["mean_popularity@2"] == pytest.approx(11 / 3)
    assert truth["truth_popularity"].mean() == pytest.approx(11 / 6)
    assert got["popularity_ratio@2"] == pytest.approx(2.0)
    # Buckets of the lists: u1 torso+head, u2 head+tail, u3 head+torso.
    assert got["tail_share@2"] == pytest.approx(1 / 6)
    assert got["head_share@2"] == pytest.approx(1 / 2) and got["torso_share@2"] == pytest.approx(1 / 3)
    # Buckets of the truth: u1 {torso, tail}, u2 {tail}, u3 {head, tail}.
    assert truth["truth_tail_share"].mean() == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert truth["truth_head_share"].mean() == pytest.approx(1 / 6)


def test_categorical_feature_diversity_and_zero_embeddings(items):
    # Single-valued: a, b "p"; c, e "q"; d none. u1 (b, a): same -> 0; u2 (a, d): 1; u3: 0.
    cat = ba.ItemContext(COUNTS, items.buckets, embeddings=EMB, features=ba.feature_sets(["p", "p", "q", "", "q"]))
    got = ba.per_user_list_metrics(OURS, cat, ks=(2,))
    assert got["diversity_feature@2"].tolist() == pytest.approx([0.0, 1.0, 0.0])
    # e has a zero embedding: cosine 0 with anything, distance 1; two items without a genre: distance 0.
    pairs = ba.per_user_list_metrics(np.array([[E, A], [D, D]]), cat, ks=(2,))
    assert pairs["diversity_embedding@2"].tolist() == pytest.approx([1.0, 0.0])
    assert pairs["diversity_feature@2"].tolist() == pytest.approx([1.0, 0.0])


def _analysis(task, items, **kw):
    labels = {"user_gender": np.array(["F", "M", "F"], dtype=object)}
    args = dict(cold_max_events=3, min_group_users=1)
    args.update(kw)
    return slices.analyse(task, {"model": OURS, "popularity": POP}, items, np.array([1, 10, 3]), labels,
                          ks=(1, 2), **args)


def test_activity_slices_and_their_weighted_mean(task, items):
    out = _analysis(task, items)
    act = out["slices"]["user_activity"]
    assert act["threshold"] == 3 and "configured" in act["rule"]
    cold, warm = act["groups"]["cold"], act["groups"]["warm"]
    assert (cold["num_users"], warm["num_users"]) == (2, 1)  # u1 (1 event), u3 (3) vs u2 (10)
    assert cold["model"]["recall@2"] == pytest.approx(0.5) and warm["model"]["recall@2"] == pytest.approx(1.0)
    # Popularity [a, b] for all: u1 finds b, u2 nothing, u3 a.
    assert cold["popularity"]["recall@2"] == pytest.approx(0.5) and warm["popularity"]["recall@2"] == 0.0
    assert cold["model"]["coverage@2"] == pytest.approx(2 / 5)  # {a, b}
    assert warm["model"]["tail_share@2"] == pytest.approx(1 / 2)  # u2's d
    overall = rm.evaluate_topk(task, OURS, ks=(2,), filter_seen=False)["recall@2"]
    assert overall == pytest.approx((2 * 0.5 + 1 * 1.0) / 3)
    # Data-derived: the 20th percentile of (1, 10, 3) = 1 + 0.4 * (3 - 1) = 1.8 -> 1: only u1 is cold.
    derived = _analysis(task, items, cold_max_events=-1)["slices"]["user_activity"]
    assert derived["threshold"] == 1 and derived["groups"]["cold"]["num_users"] == 1
    assert "20th percentile" in derived["rule"]


def test_item_popularity_slices(task, items):
    groups = _analysis(task, items)["slices"]["item_popularity"]["groups"]
    # head {a}: u3 only, its a found; torso {b}: u1, found; tail {c, d, e}: u1 c (missed),
    # u2 d (rank 1), u3 e (missed).
    assert groups["head"]["num_users"] == 1 and groups["head"]["model"]["recall@2"] == 1.0
    assert groups["torso"]["num_users"] == 1 and groups["torso"]["model"]["recall@1"] == 1.0
    tail = groups["tail"]
    assert (tail["num_users"], tail["num_truth_items"], tail["num_items"]) == (3, 3, 3)
    assert tail["model"]["recall@2"] == pytest.approx(1 / 3) and tail["model"]["recall@1"] == 0.0
    assert tail["popularity"]["recall@2"] == 0.0  # popularity never reaches the tail


def test_user_feature_slices_and_fairness(task, items):
    sl = _analysis(task, items)["slices"]["user_feature:user_gender"]
    f, m = sl["groups"]["F"], sl["groups"]["M"]
    assert (f["num_users"], m["num_users"]) == (2, 1)
    assert f["model"]["recall@2"] == pytest.approx(0.5) and m["model"]["recall@2"] == 1.0
    fair = sl["fairness"]["model"]
    assert fair["recall@2"] == {"ratio": pytest.approx(2.0), "best": "M", "worst": "F"}
    # @1: F (1/2 + 1/2) / 2, M 0: no finite ratio, and it says why.
    assert fair["recall@1"]["ratio"] is None and "(M) has recall 0" in fair["recall@1"]["why"]
    # Only groups with >= 2 users count: F alone is not a comparison.
    alone = _analysis(task, items, min_group_users=2)["slices"]["user_feature:user_gender"]["fairness"]["model"]
    assert alone["recall@2"]["ratio"] is None and "fewer than 2 groups" in alone["recall@2"]["why"]


def test_beyond_accuracy_entry_has_every_model_and_the_truth(task, items):
    ba_entry = _analysis(task, items)["beyond_accuracy"]
    assert ba_entry["model"]["coverage@2"] == pytest.approx(3 / 5)
    assert ba_entry["popularity"]["coverage@2"] == pytest.approx(2 / 5)
    assert ba_entry["popularity"]["tail_share@2"] == 0.0
    assert "recall@2" not in ba_entry["model"]  # accuracy stays in metrics.json's "model"
    assert ba_entry["truth"]["truth_tail_share"] == pytest.approx(2 / 3)
    assert ba_entry["params"]["bucket_items"] == {"head": 1, "torso": 1, "tail": 3}


def test_feature_groups():
    ages = slices.feature_groups(np.array([18.0, 25.0, 18.0, np.nan]), "numeric", max_groups=3)
    assert ages.tolist() == ["18", "25", "18", "(missing)"]
    # More distinct values than max_groups: quantile bands; quantiles of 1..8 at 0, 1/2, 1: 1, 4.5, 8.
    bands = slices.feature_groups(np.arange(1.0, 9.0), "numeric", max_groups=2, numeric_bins=2)
    assert bands.tolist() == ["[1, 4.5)"] * 4 + ["[4.5, 8]"] * 4
    # Categorical: the max_groups - 1 most frequent kept, the rest pooled; "(missing)" never pooled.
    cats = slices.feature_groups(np.array([b"a", b"a", b"a", b"b", b"b", b"c", b""]), "categorical", max_groups=2)
    assert cats.tolist() == ["a", "a", "a", "(other)", "(other)", "(other)", "(missing)"]


def test_feature_choice_errors_name_the_choices():
    items = {"item_genres": "multi_valued", "item_title": "text", "item_studio": "categorical"}
    assert slices.choose_item_feature("", items) == "item_genres"
    assert slices.choose_item_feature("studio", items) == "item_studio"
    assert slices.choose_item_feature("none", items) is None
    with pytest.raises(ValueError, match=r"'title' is not a categorical or multi-valued.*item_genres"):
        slices.choose_item_feature("title", items)
    users = {"user_age": "numeric", "user_gender": "categorical"}
    assert slices.choose_user_features(["*"], users) == ["user_age", "user_gender"]
    with pytest.raises(ValueError, match=r"'height'.*user_age"):
        slices.choose_user_features(["gender", "height"], users)


def test_bad_shapes_are_errors(task, items):
    with pytest.raises(ValueError, match="train_events"):
        slices.analyse(task, {"model": OURS}, items, np.array([1, 2]), {}, ks=(2,))
    with pytest.raises(ValueError, match="2 ranked lists for 3"):
        slices.analyse(task, {"model": OURS[:2]}, items, np.array([1, 2, 3]), {}, ks=(2,))
    with pytest.raises(ValueError, match="embeddings have 2 rows"):
        ba.per_user_list_metrics(OURS, ba.ItemContext(COUNTS, items.buckets, embeddings=EMB[:2]), ks=(2,))


def test_config_names_unknown_features_when_loaded():
    from tfx_pipeline.config import ConfigError, load_config

    cfg = load_config("configs/movielens_1m.yaml", {"trainer": {"evaluation": {"user_features": ["gender", "age"]}}})
    assert cfg.trainer.evaluation.user_features == ("gender", "age")
    with pytest.raises(ConfigError, match=r"movielens_1m.yaml: trainer.evaluation.user_features: 'height'"):
        load_config("configs/movielens_1m.yaml", {"trainer": {"evaluation": {"user_features": ["height"]}}})
    with pytest.raises(ConfigError, match="'title' is not a categorical or multi-valued item feature"):
        load_config("configs/movielens_1m.yaml", {"trainer": {"evaluation": {"item_feature": "title"}}})
    with pytest.raises(ConfigError, match="head_share < tail_share"):
        load_config("configs/movielens_1m.yaml", {"trainer": {"evaluation": {"head_share": 0.9}}})


def test_evaluation_section_reaches_the_retrieval_trainer(tmp_path):
    import json

    from tfx_pipeline.config import load_config
    from tfx_pipeline.wiring.pipeline import create_pipeline

    cfg = load_config("configs/implicit_demo.yaml", {"pipeline_root": str(tmp_path / "run"),
                                                     "serving_base_path": str(tmp_path / "serving"),
                                                     "trainer": {"evaluation": {"cold_user_max_events": 7},
                                                                 "baseline": {"factors": 5}}})
    trainer = {c.id: c for c in create_pipeline(cfg).components}["RetrievalTrainer"]
    cc = json.loads(trainer.exec_properties["custom_config"])
    assert cc["trainer"]["evaluation"]["cold_user_max_events"] == 7
    # The classical baseline's settings reach the trainer too (they were once dropped on the way).
    assert cc["trainer"]["baseline"]["factors"] == 5


def test_no_evaluated_user_gives_empty_groups_not_an_error(items):
    seen_only = rm.build_eval_task(pd.DataFrame({"user_id": ["u"], "item_id": ["a"]}),
                                   pd.DataFrame({"user_id": ["u"], "item_id": ["a"]}), ITEMS)
    _, ranked = rm.evaluate_and_rank(seen_only, lambda r: np.zeros((len(r), 5)), ks=(2,))
    out = slices.analyse(seen_only, {"model": ranked}, items, np.zeros(0), {"user_gender": np.array([], object)},
                         ks=(2,))
    assert out["beyond_accuracy"]["num_users"] == 0 and "model" not in out["beyond_accuracy"]
    assert out["slices"]["user_activity"]["groups"] == {"cold": {"num_users": 0}, "warm": {"num_users": 0}}
    assert out["slices"]["item_popularity"]["groups"]["tail"]["num_users"] == 0


def test_star_leaves_out_high_cardinality_categoricals_unless_named(task):
    from trainer.hparams import EvaluationConfig

    users = {"user_zip": np.array([b"100", b"200", b"300"], object),
             "user_gender": np.array([b"F", b"M", b"F"], object)}
    kinds = {"user_zip": "categorical", "user_gender": "categorical"}

    padded = np.array([[g.encode() for g in gs] + [b""] * (2 - len(gs)) for gs in GENRES], object)  # as read

    def run(**cfg):
        return slices.run_analysis(task, {"model": OURS}, COUNTS, EMB, {"item_genres": padded},
                                   {"item_genres": "multi_valued"}, users, kinds, np.array([1, 10, 3]), (2,),
                                   EvaluationConfig(max_groups=2, min_group_users=1, **cfg))

    star = run()
    assert set(star["slices"]) == {"user_activity", "item_popularity", "user_feature:user_gender"}
    assert "3 values > max_groups 2" in star["beyond_accuracy"]["params"]["user_features_skipped"]["user_zip"]
    assert star["beyond_accuracy"]["params"]["item_feature"] == "item_genres"
    # The padded multi-valued column gives the same genre diversity as the hand-made sets (2/3).
    assert star["beyond_accuracy"]["model"]["diversity_feature@2"] == pytest.approx(2 / 3)
    named = run(user_features=("zip",))
    assert set(named["slices"]["user_feature:user_zip"]["groups"]) == {"100", "(other)"}  # ties: by value
