"""The retrieval diagnosis (trainer/retrieval/diagnosis.py): its pure functions on hand-computed
tiny inputs, then metrics.json "diagnosis" of the tiny real run (tests/trainer/conftest.py
``trained_retrieval``) and the report section that shows it, in Markdown and HTML."""

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from trainer import features as F
from trainer.retrieval import beyond_accuracy as ba
from trainer.retrieval import diagnosis as dg
from trainer.retrieval.metrics import EvalTask

COUNTS = np.array([3.0, 9.0, 3.0, 0.0, 7.0])  # ranked: item 1 (9), 4 (7), 0 (3), 2 (3, after 0), 3 (0)


# -- pure functions ---------------------------------------------------------------

def test_spearman_on_known_rankings():
    # y's ranks with its tie averaged: [1, 2, 3.5, 5, 3.5]; x's: [1..5]. Centred: dx = [-2, -1, 0, 1, 2],
    # dy = [-2, -1, .5, 2, .5]: sum dx dy = 8, sum dx^2 = 10, sum dy^2 = 9.5 -> rho = 8 / sqrt(95).
    assert dg.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert dg.spearman([1, 10, 100], [1, 2, 3]) == pytest.approx(1.0)  # monotone, not linear: still 1
    assert dg.spearman([1, 10, 100], [3, 2, 1]) == pytest.approx(-1.0)
    assert dg.spearman([1, 2, 3], [4, 4, 4]) is None and dg.spearman([1], [2]) is None


def test_deciles_buckets_and_norm_means():
    # Ranks 0..4 of 5 items -> decile 10 r // 5 = 2 r: item 1 -> 0, item 4 -> 2, item 0 -> 4, item 2 -> 6, item 3 -> 8.
    deciles = dg.popularity_deciles(COUNTS)
    assert deciles.tolist() == [4, 0, 6, 8, 2]
    assert dg.popularity_deciles(np.arange(20.0)[::-1]).tolist() == [i // 2 for i in range(20)]
    assert dg.group_means([1, 2, 3, 4, 5], [0, 0, 1, 2, 2], 4) == [1.5, 3.0, 4.5, None]
    # Buckets (N = 22): interactions before each item 1: 0, 4: 9, 0: 16, 2: 19, 3: 22 -> head (< 11): 1, 4;
    # torso (< 17.6): 0; tail: 2, 3 (and 3 has no train interaction).
    buckets = ba.popularity_buckets(COUNTS)
    assert buckets.tolist() == [1, 0, 2, 2, 0]
    norms = np.array([2.0, 4.0, 1.0, 0.5, 3.0])
    s = dg.norm_summary(norms, COUNTS, buckets, deciles, dg.PRE_NORMALISATION)
    assert s["buckets"] == {"head": {"items": 2, "mean_norm": 3.5}, "torso": {"items": 1, "mean_norm": 2.0},
                            "tail": {"items": 2, "mean_norm": 0.75}}
    # Norm ranks [3, 5, 2, 1, 4], count ranks [2.5, 5, 2.5, 1, 4]: sum dx dy = 9.5, 10 and 9.5 -> 9.5 / sqrt(95).
    assert s["spearman_norm_vs_count"] == pytest.approx(9.5 / math.sqrt(95))
    assert s["mean_norm"] == pytest.approx(2.1) and s["measured"] == "pre_normalisation"
    assert s["decile_mean_norm"] == [4.0, None, 3.0, None, 2.0, None, 1.0, None, 0.5, None]
    table = dg.decile_table(COUNTS, deciles)
    assert table[0] == {"decile": 1, "items": 1, "min_count": 9.0, "max_count": 9.0, "interaction_share": 9 / 22}
    assert table[1] == {"decile": 2, "items": 0, "min_count": None, "max_count": None, "interaction_share": 0.0}


def test_decile_shares_of_lists_and_truth():
    labels = np.arange(20) // 2  # items 2d and 2d + 1 in decile d
    # First 3 of user 0: items 0, 1, 5 -> deciles 0, 0, 2; of user 1: items 2, 19, 3 -> deciles 1, 9, 1.
    topk = np.array([[0, 1, 5, 6], [2, 19, 3, 4]])
    shares = dg.list_shares(topk, labels, 10, k=3)
    assert shares == pytest.approx([1 / 3, 1 / 3, 1 / 6, 0, 0, 0, 0, 0, 0, 1 / 6])
    # -1 entries are no items: user 0's two valid entries split 1/2 - 1/2; an all -1 list is left out.
    padded = np.array([[0, -1, 5], [-1, -1, -1]])
    assert dg.list_shares(padded, labels, 10, k=3) == pytest.approx([0.5, 0, 0.5] + [0] * 7)
    assert dg.list_shares(np.full((2, 3), -1), labels, 10, k=3) is None
    truth = sp.csr_matrix((np.ones(3, bool), ([0, 0, 1], [0, 4, 19])), shape=(2, 20))  # {0, 4} and {19}
    assert dg.truth_shares(truth, labels, 10) == pytest.approx([0.25, 0, 0.25] + [0] * 6 + [0.5])
    # With the buckets as labels, the list shares are the beyond-accuracy bucket shares.
    counts = np.arange(20.0)[::-1]
    buckets = ba.popularity_buckets(counts)
    per_user = ba.per_user_list_metrics(topk, ba.ItemContext(counts, buckets), ks=(3,))
    assert dg.list_shares(topk, buckets, 3, k=3) == pytest.approx(
        [per_user[f"{b}_share@3"].mean() for b in ba.BUCKETS])


def _task(n: int) -> EvalTask:
    """n users, n items, user r's truth item r, nothing seen."""
    ids = np.array([str(i) for i in range(n)])
    return EvalTask(user_ids=ids, item_ids=ids, truth=sp.identity(n, dtype=bool, format="csr"),
                    seen=sp.csr_matrix((n, n), dtype=bool))


def test_importance_is_the_drop_of_the_feature_that_carries_the_signal():
    n = 200
    task = _task(n)
    query = {"signal": np.arange(n), "noise": np.random.default_rng(1).normal(size=(n, 3))}
    calls = []

    def embed(cols):  # the query is the one-hot of "signal"; "noise" is ignored
        calls.append(len(cols["signal"]))
        return np.eye(n)[cols["signal"]]

    groups = {"signal": ["signal"], "noise": ["noise"], "absent": ["not_in_the_query"]}
    out = dg.permutation_importance(task, query, embed, np.eye(n), groups, ks=(5, 1), max_users=n, seed=0)
    s = out["sample"]
    assert s["users"] == n and s["eval_users"] == n and s["selection"] == "every evaluated user"
    assert s["recall@1"] == 1.0 and s["recall@5"] == 1.0 and s["seconds"] >= 0
    assert list(out["groups"]) == ["signal", "noise"]  # a group without inputs in the query is skipped
    assert list(out["groups"]["signal"]) == ["recall@5_drop", "recall@1_drop"]  # in the order asked
    assert out["groups"]["noise"] == {"recall@5_drop": 0.0, "recall@1_drop": 0.0}
    # Shuffled, a user finds their item at rank 1 only where the permutation fixes them (~1 in n).
    assert out["groups"]["signal"]["recall@1_drop"] > 0.9 and out["groups"]["signal"]["recall@5_drop"] > 0.8
    assert calls == [n, n, n]  # one embedding pass for the base and one per group
    # A seeded sample: its size, the same rows for the same seed, the heading's figures on it.
    sampled = dg.permutation_importance(task, query, embed, np.eye(n), groups, ks=(1,), max_users=50, seed=3)
    assert sampled["sample"]["users"] == 50 and sampled["sample"]["eval_users"] == n
    assert "seed 3" in sampled["sample"]["selection"] and sampled["groups"]["noise"]["recall@1_drop"] == 0.0
    assert np.array_equal(dg.sample_rows(n, 50, 3), dg.sample_rows(n, 50, 3))
    assert np.all(np.diff(dg.sample_rows(n, 50, 3)) > 0) and len(dg.sample_rows(10, 50, 3)) == 10
    empty = dg.permutation_importance(_task(0), {"signal": np.zeros(0, int)}, embed, np.eye(0), groups, ks=(1,))
    assert empty["groups"] == {} and empty["sample"]["users"] == 0


def test_query_groups():
    keys = [F.USER_ID, F.HISTORY_ITEM_IDS, F.HOUR_OF_DAY, F.DAY_OF_WEEK, F.HOURS_SINCE_PREV_EVENT,
            "user_gender", "user_age"]
    assert dg.query_groups(keys, ["user_gender", "user_age"]) == {
        "user_id": [F.USER_ID], "user_age": ["user_age"], "user_gender": ["user_gender"],
        "history": [F.HISTORY_ITEM_IDS], "context": [F.HOUR_OF_DAY, F.DAY_OF_WEEK, F.HOURS_SINCE_PREV_EVENT]}
    assert list(dg.query_groups([F.USER_ID, F.HOUR_OF_DAY], [])) == ["user_id", "context"]


# -- the real run -------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(trained_retrieval):
    out, _, _ = trained_retrieval
    return out, json.loads((out / "model" / "metrics.json").read_text())


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def test_metrics_json_has_the_diagnosis(saved):
    out, m = saved
    d = m["diagnosis"]
    assert set(d) >= {"norms", "retrieved_popularity", "importance", "seconds", "params"}
    norms = d["norms"]
    assert norms["measured"] == "pre_normalisation"  # the towers L2-normalise; the MLP output is reachable
    assert _finite(norms["spearman_norm_vs_count"]) and -1.0 <= norms["spearman_norm_vs_count"] <= 1.0
    assert sum(b["items"] for b in norms["buckets"].values()) == sum(
        m["beyond_accuracy"]["params"]["bucket_items"].values())
    assert all(_finite(b["mean_norm"]) and b["mean_norm"] > 0 for b in norms["buckets"].values() if b["items"])
    # candidate_norms.npy: count, norm, bucket per item; the JSON's figures recompute from it.
    per_item = np.load(out / "run" / "candidate_norms.npy")
    assert per_item.shape == (sum(b["items"] for b in norms["buckets"].values()), 3)
    assert dg.spearman(per_item[:, 1], per_item[:, 0]) == pytest.approx(norms["spearman_norm_vs_count"])
    assert not np.allclose(per_item[:, 1], 1.0)  # not the served (unit) embeddings
    rp = d["retrieved_popularity"]
    assert rp["k"] == 10 and set(rp["shares"]) == {"model", "popularity", "als", "truth"}
    for name, shares in rp["shares"].items():
        assert len(shares) == 10 and all(_finite(v) for v in shares) and sum(shares) == pytest.approx(1.0), name
    assert sum(row["items"] for row in rp["deciles"]) == per_item.shape[0]
    imp = d["importance"]
    assert set(imp["groups"]) == {"user_id", "user_age", "user_gender", "user_occupation", "history", "context"}
    assert all(set(v) == {"recall@100_drop", "recall@10_drop"} and all(_finite(x) for x in v.values())
               for v in imp["groups"].values())
    s = imp["sample"]  # 2,000 > the tiny run's users: every one sampled, so the base is the eval figure
    assert s["users"] == s["eval_users"] == m["num_eval_users"] and s["max_users"] == 2000
    assert s["recall@10"] == pytest.approx(m["model"]["recall@10"], abs=1e-9)
    assert s["recall@100"] == pytest.approx(m["model"]["recall@100"], abs=1e-9)
    assert _finite(d["seconds"]) and 0 <= s["seconds"] <= d["seconds"]
    print(f"\ndiagnosis on the tiny run: {d['seconds']:.3f} s (importance {s['seconds']:.3f} s, "
          f"{len(imp['groups'])} groups, {s['users']} users)")


def test_report_shows_the_diagnosis(saved, tmp_path):
    from trainer.report import write_report

    out, m = saved
    report = tmp_path / "report"
    text = open(write_report(str(report), str(out / "run"), None, None)).read()
    assert "### Diagnosis" in text
    assert "norms here are of the vector before that normalisation" in text
    rho = m["diagnosis"]["norms"]["spearman_norm_vs_count"]
    assert f"Spearman's rho of candidate norm vs train interaction count over the 30 catalogue items: {rho:.3f}" in text
    assert "| popularity bucket | items | mean candidate norm |" in text
    assert ("| popularity decile | items | train count | share of train interactions | mean candidate norm | ours@10 "
            "| popularity@10 | ALS@10 | relevant items |") in text
    n = m["num_eval_users"]
    assert (f"Permutation importance of the query inputs on {n:,} of {n:,} evaluated users (every evaluated user; "
            in text)
    assert f"Recall@100 {m['model']['recall@100']:.4f}, Recall@10 {m['model']['recall@10']:.4f} on them vs" in text
    assert "| query input group | recall@100_drop | recall@10_drop |" in text and "| history |" in text
    assert (report / "retrieval_norms.png").stat().st_size > 1000
    assert "![candidate norm vs item popularity](retrieval_norms.png)" in text
    html = (report / "report.html").read_text()
    assert "<h3>Diagnosis</h3>" in html and "Spearman&#x27;s rho of candidate norm" in html
    assert '<img src="data:image/png;base64,' in html and 'alt="candidate norm vs item popularity"' in html
    assert "<th>recall@100_drop</th>" in html


def test_report_without_or_with_an_output_only_diagnosis(tmp_path):
    from tests.trainer.test_report import _beyond, _m
    from trainer.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    m = _beyond(_m(0.30, 0.15))
    (run / "metrics.json").write_text(json.dumps(m))
    assert "Diagnosis" not in open(write_report(str(tmp_path / "r1"), str(run), None, None)).read()
    d, _ = dg.diagnose(_task(4), {"model": np.array([[1, 0], [0, 1], [3, 2], [2, 3]])}, np.array([5.0, 3, 1, 0]),
                       np.ones(4), dg.OUTPUT, {}, lambda cols: None, np.eye(4), [], (10,),
                       type("Cfg", (), {"head_share": 0.5, "tail_share": 0.8, "report_k": 10,
                                        "importance_users": 0})())
    (run / "metrics.json").write_text(json.dumps({**m, "diagnosis": d}))
    text = open(write_report(str(tmp_path / "r2"), str(run), None, None)).read()
    assert "No pre-normalisation vector was reachable" in text and "n/a (items never seen" in text  # all norms 1
    assert "Permutation importance" not in text and "retrieval_norms.png" not in text  # no npy: no plot
    assert "| 1 | 1 | 5 | 0.5556 | 1.0000 |" in text  # decile 1: item 0 (5 of 9 interactions)
