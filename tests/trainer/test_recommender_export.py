"""The one-call recommender SavedModel (trainer/recommender/export.py) on the hand-built models.

Expected values come from tests/support/client_models.py's tables (its docstring); the
client tests (tests/serving/test_client.py) run the same cases over gRPC, one row each.
Here: a batch of different rows in one call, the stock-ops variant loading where ScaNN
cannot be imported, and bad input.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving import names
from tests.support.client_models import save_models
from trainer.recommender.export import build, neutral_inputs

REPO = str(Path(__file__).resolve().parents[2])

FEATURES = ["item_genres", "item_release_year", "item_title"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("recommender")
    save_models(str(root))
    out = root / names.RECOMMENDER_BRUTE_FORCE_MODEL / "1"
    build(str(root / names.RETRIEVAL_MODEL / "1"), str(root / names.RANKING_MODEL / "1"), str(out),
          names.RECOMMENDER_BRUTE_FORCE_MODEL, num_candidates=100)
    return out


def _inputs(rows: list[dict]) -> dict:
    """One dict per row -> batch inputs; unset inputs neutral."""
    n = len(rows)
    batch = neutral_inputs(n, FEATURES)
    batch.update({
        names.USER_ID: np.array([r.get("user", "nobody") for r in rows], object),
        names.HOUR_OF_DAY: np.full(n, -1, np.int64), names.DAY_OF_WEEK: np.full(n, -1, np.int64),
        names.HOURS_SINCE_PREV_EVENT: np.full(n, -1.0, np.float32),
        "user_age": np.full(n, np.nan, np.float32), "user_country": np.full(n, "", object),
        names.K: np.array([r.get("k", 3) for r in rows], np.int32),
        names.EXCLUDE_HISTORY: np.array([r.get("exclude_history", True) for r in rows]),
        names.RANK_BY: np.array([r.get("rank_by", "") for r in rows], object),
        names.DIVERSITY: np.array([r.get("diversity", 0.0) for r in rows], np.float32),
        names.NUM_CANDIDATES: np.array([r.get("num_candidates", 0) for r in rows], np.int32),
    })

    def ragged(key):
        lists = [r.get(key, []) or [""] for r in rows]
        width = max(len(v) for v in lists)
        return np.array([v + [""] * (width - len(v)) for v in lists], object)

    batch[names.HISTORY_ITEM_IDS] = ragged("history")
    batch[names.EXCLUDE_ITEM_IDS] = ragged("exclude")
    batch[names.filter_input("item_genres")] = ragged("genres")
    return {k: tf.constant(v) for k, v in batch.items()}


def _ids(row) -> list[str]:
    return [i.decode() for i in row if i]


def test_rows_of_one_batch_are_independent(exported):
    model = tf.saved_model.load(str(exported))
    rows = [
        {"history": ["i00"], "k": 4},                                  # ranking reorders cluster 0, pulls i19 up
        {"history": ["i00"], "k": 3, "rank_by": "rating"},             # i02 4.8, i01 4.2, i03 3.5
        {"history": ["i00"], "k": 3, "exclude": ["i04"]},
        {"history": ["i00"], "k": 6, "genres": ["Comedy"]},            # clusters 0 and 2
        {"history": ["i00"], "k": 3, "diversity": 0.5},                # MMR: i04, then away from cluster 0
        {"user": "stranger", "k": 3, "num_candidates": 5},             # popular i10..i14, by engagement
        {"user": "u1", "k": 2},                                        # stored history [i05]
    ]
    out = model.signatures[names.RECOMMEND_SIGNATURE](**_inputs(rows))
    got = [_ids(r) for r in out[names.OUT_ITEM_IDS].numpy()]
    assert got == [["i04", "i03", "i02", "i19"], ["i02", "i01", "i03"], ["i03", "i02", "i19"],
                   ["i04", "i03", "i02", "i01", "i14", "i13"], ["i04", "i19", "i10"], ["i14", "i13", "i12"],
                   ["i04", "i03"]]
    assert out[names.OUT_ITEM_IDS].shape[1] == 6  # max k; shorter rows padded with ""
    assert out[names.OUT_SCORES][0, :4].numpy() == pytest.approx([0.9, 0.8, 0.7, 0.65])
    assert out[names.OUT_RETRIEVAL_SCORES][5, :3].numpy() == pytest.approx([80, 85, 90])
    assert [s.decode() for s in out[names.OUT_SOURCE].numpy()] == ["retrieval"] * 5 + ["popular", "retrieval"]
    assert out[names.OUT_REASONS][5, 0].numpy().decode() == names.REASON_POPULAR
    assert out[names.OUT_REASONS][6, 0].numpy().decode().startswith('similar to i05 "Item 05" (0.32)')
    assert _ids(out[names.OUT_HISTORY_ITEM_IDS][6].numpy()) == ["i05"]
    assert out["item_title"][0, 0].numpy().decode() == "Item 04"
    assert not np.isfinite(out[names.OUT_SCORES][0, 4].numpy()) and out["item_title"][0, 4].numpy() == b""


def test_bad_rank_by_is_an_invalid_argument(exported):
    model = tf.saved_model.load(str(exported))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank_by"):
        model.signatures[names.RECOMMEND_SIGNATURE](**_inputs([{"history": ["i00"], "rank_by": "clicks"}]))


def test_stock_ops_variant_loads_where_scann_cannot_be_imported(exported):
    """recommender_brute_force holds no Scann ops: stock TF Serving can serve it."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["scann"] = None  # any `import scann` now fails
        import tensorflow as tf
        from tests.support.saved_model_ops import graph_ops, scann_ops
        assert not scann_ops({str(exported)!r}), sorted(graph_ops({str(exported)!r}))
        model = tf.saved_model.load({str(exported)!r})
        print("signatures", sorted(model.signatures))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'recommend'" in done.stdout and "'serving_default'" in done.stdout
