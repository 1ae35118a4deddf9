"""Hand-derived checks of trainer/retrieval/metrics.py (the shared top-K evaluation)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trainer.retrieval import metrics as rm

ITEMS = ["a", "b", "c", "d", "e"]  # catalogue indices 0..4

# u1: train {a}; eval {b, c}
# u2: train {b}; eval {d}
# u3: train {c}; no eval                       -> skipped
# u4: no train;  eval {a, a} (repeat)          -> truth {a}
# u5: train {e}; eval {e} (only a seen item)   -> truth empty, skipped
# u6: eval {z}, z not in the catalogue         -> dropped, skipped
TRAIN = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u5"], "item_id": ["a", "b", "c", "e"]})
EVAL = pd.DataFrame({
    "user_id": ["u1", "u1", "u2", "u4", "u4", "u5", "u6"],
    "item_id": ["b", "c", "d", "a", "a", "e", "z"],
})
SCORES = {
    # a is seen and masked: ranking b, d, e, c
    "u1": [10.0, 5.0, 1.0, 4.0, 3.0],
    # b is seen and masked: ranking e, c, a, d
    "u2": [1.0, 9.0, 2.0, 0.5, 3.0],
    # ranking b, a, then ties among non-truth items
    "u4": [2.0, 3.0, 0.0, 0.0, 0.0],
}
L3, L5 = 1 / math.log2(3), 1 / math.log2(5)
EXPECTED = {
    "recall@1": (0.5 + 0 + 0) / 3,
    "ndcg@1": (1 + 0 + 0) / 3,
    "hit_rate@1": 1 / 3,
    "recall@2": (0.5 + 0 + 1) / 3,
    "ndcg@2": (1 / (1 + L3) + 0 + L3) / 3,
    "hit_rate@2": 2 / 3,
    "recall@4": 1.0,
    "ndcg@4": ((1 + L5) / (1 + L3) + L5 + L3) / 3,
    "hit_rate@4": 1.0,
}


@pytest.fixture
def task() -> rm.EvalTask:
    return rm.build_eval_task(TRAIN, EVAL, ITEMS)


def score_fn_for(task: rm.EvalTask, calls: list | None = None):
    def fn(rows: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(len(rows))
        return np.array([SCORES[u] for u in task.user_ids[rows]], dtype=np.float32)

    return fn


def test_task_users_truth_and_seen(task):
    assert task.user_ids.tolist() == ["u1", "u2", "u4"]
    assert task.item_ids.tolist() == ITEMS
    assert task.truth.toarray().astype(int).tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 0]]
    assert task.seen.toarray().astype(int).tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert task.num_dropped_eval_events == 1


def test_hand_derived_metrics(task):
    got = rm.evaluate_scores(task, score_fn_for(task), ks=(1, 2, 4))
    assert got["num_users"] == 3
    for name, value in EXPECTED.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_seen_items_are_excluded(task):
    # u1's top item 'a' is seen in train: without masking it would take rank 1.
    # If masking failed, recall@1 of u1 would be 0 and so would the mean.
    got = rm.evaluate_scores(task, score_fn_for(task), ks=(1,))
    assert got["recall@1"] == pytest.approx(1 / 6)
    # a model scoring the seen item +inf still cannot recommend it
    def inf_seen(rows):
        s = score_fn_for(task)(rows)
        s[:, 0] = np.inf
        return s

    assert rm.evaluate_scores(task, inf_seen, ks=(1,))["recall@1"] == pytest.approx(
        (0.5 + 0 + 1) / 3  # u4's 'a' is not seen and now wins rank 1
    )


def test_recall_is_not_capped():
    train = pd.DataFrame({"user_id": ["x"], "item_id": ["e"]})
    ev = pd.DataFrame({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"]})
    t = rm.build_eval_task(train, ev, ITEMS)
    got = rm.evaluate_scores(t, lambda rows: np.array([[5.0, 0, 0, 1, 1]]), ks=(1, 2))
    assert got["recall@1"] == pytest.approx(1 / 3)  # not 1 / min(1, 3)
    assert got["ndcg@1"] == pytest.approx(1.0)
    # top2 = a, then d or e (tie, both non-truth): one hit out of 3
    assert got["recall@2"] == pytest.approx(1 / 3)
    assert got["ndcg@2"] == pytest.approx(1 / (1 + L3))


def test_k_larger_than_catalogue(task):
    got = rm.evaluate_scores(task, score_fn_for(task), ks=(100,))
    assert got["recall@100"] == pytest.approx(1.0)
    assert got["hit_rate@100"] == pytest.approx(1.0)


def test_chunking_gives_identical_results(task):
    calls: list = []
    one = rm.evaluate_scores(task, score_fn_for(task, calls), ks=(1, 2, 4), batch_size=1)
    assert calls == [1, 1, 1]
    assert one == rm.evaluate_scores(task, score_fn_for(task), ks=(1, 2, 4), batch_size=256)


def test_evaluate_topk_filters_seen_like_evaluate_scores(task):
    # Full rankings including the seen items, as a model without masking returns them.
    full = np.argsort(-np.array([SCORES[u] for u in task.user_ids]), axis=1, kind="stable")
    got = rm.evaluate_topk(task, full, ks=(1, 2, 4))
    for name, value in EXPECTED.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    # -1 pads are never hits
    padded = np.full((3, 2), -1)
    padded[2, 0] = 0  # u4: 'a' at rank 1
    got = rm.evaluate_topk(task, padded, ks=(1, 2))
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["hit_rate@2"] == pytest.approx(1 / 3)


def test_errors(task):
    with pytest.raises(ValueError, match="shape"):
        rm.evaluate_scores(task, lambda rows: np.zeros((len(rows), 4)))
    with pytest.raises(ValueError, match="NaN"):
        rm.evaluate_scores(task, lambda rows: np.full((len(rows), 5), np.nan))
    with pytest.raises(ValueError):
        rm.evaluate_topk(task, np.full((3, 2), 7))
    with pytest.raises(ValueError, match="unique"):
        rm.build_eval_task(TRAIN, EVAL, ["a", "a"])


def test_read_only_scores_are_not_modified(task):
    pop = np.arange(5, dtype=np.float64)[::-1].copy()
    pop.setflags(write=False)
    rm.evaluate_scores(task, lambda rows: np.broadcast_to(pop, (len(rows), 5)), ks=(2,))
    assert pop.tolist() == [4, 3, 2, 1, 0]


def _brute_force(truth: list[set], seen: list[set], scores: np.ndarray, k: int) -> dict[str, float]:
    rec, ndcg, hit = [], [], []
    for u, t in enumerate(truth):
        ranked = [j for j in np.argsort(-scores[u], kind="stable") if j not in seen[u]][:k]
        hits = [j in t for j in ranked]
        rec.append(sum(hits) / len(t))
        hit.append(float(any(hits)))
        dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
        ndcg.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(k, len(t)))))
    return {f"recall@{k}": np.mean(rec), f"ndcg@{k}": np.mean(ndcg), f"hit_rate@{k}": np.mean(hit)}


def test_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(60)]
    n_users = 40
    tr = pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, n_users, 600)],
                       "item_id": [items[j] for j in rng.integers(0, 60, 600)]})
    ev = pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, n_users, 200)],
                       "item_id": [items[j] for j in rng.integers(0, 60, 200)]})
    t = rm.build_eval_task(tr, ev, items)
    scores = rng.normal(size=(t.num_users, 60))  # continuous: no ties
    truth = [set(t.truth[r].indices) for r in range(t.num_users)]
    seen = [set(t.seen[r].indices) for r in range(t.num_users)]
    for r, u in enumerate(t.user_ids):
        pairs_ev = set(ev.item_id[ev.user_id == u].map(items.index))
        pairs_tr = set(tr.item_id[tr.user_id == u].map(items.index))
        assert truth[r] == pairs_ev - pairs_tr and seen[r] == pairs_tr
    got = rm.evaluate_scores(t, lambda rows: scores[rows], ks=(5, 20), batch_size=7)
    for k in (5, 20):
        for name, value in _brute_force(truth, seen, scores, k).items():
            assert got[name] == pytest.approx(value, abs=1e-12), name
