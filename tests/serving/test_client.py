"""RecommenderClient and `recsys recommend` against a real ModelServer on free ports.

The models are tests/support/client_models.py's hand-built ones, and the one-call
`recommender` built over them by trainer/recommender/export.py; the expected lists below are
derived by hand from its tables (see that module's docstring). Every test on the `client`
fixture runs twice: one Predict on the one-call model, and the two stages in the client.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import serving  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tests.support.client_models import EMBEDDINGS, ITEMS, POPULARITY, save_models
from serving import names
from serving.client import (
    REASON_POPULAR,
    REASON_PROFILE,
    SOURCE_POPULAR,
    Recommendation,
    RecommenderClient,
    RecommenderError,
    mmr_order,
)
from serving.client_tensors import make_ndarray
from serving.model_server import ModelServer
from serving.recommend_cli import main as cli_main


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = save_models(str(tmp_path_factory.mktemp("client_models")), recommender=True)
    srv = ModelServer(config, grpc_port=0, rest_port=None, metrics_port=None, poll_interval_s=5.0)
    srv.start()
    try:
        srv.wait_until_available(120)
        yield srv
    finally:
        srv.stop(grace_s=0.5)


class Recorder(grpc.UnaryUnaryClientInterceptor):
    """Records (method, request) of every attempt the client sends."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.calls.append((client_call_details.method.rsplit("/", 1)[-1], request))
        return continuation(client_call_details, request)

    def predicts(self, signature: str) -> list:
        return [r for m, r in self.calls if m == "Predict" and r.model_spec.signature_name == signature]


@pytest.fixture(scope="module", params=["one_call", "two_stage"])
def client(server, request):
    one_call = request.param == "one_call"
    with RecommenderClient(server.grpc_address, timeout_s=10,
                           recommender_model=names.RECOMMENDER_MODEL if one_call else None) as c:
        yield c


@pytest.fixture(scope="module")
def retrieval_only(server):
    with RecommenderClient(server.grpc_address, timeout_s=10, ranking_model=None) as c:
        yield c


def ids(recs: list[Recommendation]) -> list[str]:
    return [r.item_id for r in recs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the two stages ----------------------------------------------------------------


def test_ranking_reorders_retrieval(client, retrieval_only):
    # history [i00]: retrieval scores i01 .9, i02 .8, i03 .7, i04 .6; engagement is the reverse.
    plain = retrieval_only.recommend("nobody", k=4, history=["i00"])
    assert ids(plain) == ["i01", "i02", "i03", "i04"]
    assert [r.score for r in plain] == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert all(r.rating is None and r.engagement is None for r in plain)

    # Ranking reverses cluster 0 and pulls i19 (retrieval .2, engagement .65) above i01.
    ranked = client.recommend("nobody", k=4, history=["i00"])
    assert ids(ranked) == ["i04", "i03", "i02", "i19"]
    assert [r.engagement for r in ranked] == pytest.approx([0.9, 0.8, 0.7, 0.65])
    assert [r.score for r in ranked] == pytest.approx([0.9, 0.8, 0.7, 0.65])
    assert [r.retrieval_score for r in ranked] == pytest.approx([0.6, 0.7, 0.8, 0.2])
    assert [r.rating for r in ranked] == pytest.approx([2.0, 3.5, 4.8, 1.0])
    assert ranked[0].features == {"item_genres": "Comedy", "item_release_year": "1994", "item_title": "Item 04"}
    assert ranked[0].title == "Item 04"


def test_rank_by_rating_and_blend(client):
    assert ids(client.recommend("nobody", k=3, history=["i00"], rank_by="rating")) == ["i02", "i01", "i03"]
    blend = client.recommend("nobody", k=2, history=["i00"], rank_by="blend")
    # i02: .5 * .7 + .5 * 1 (highest rating) = .85; i03 (.8, 3.5) and i04 (.9, 2.0) score lower.
    assert ids(blend)[0] == "i02" and blend[0].score == pytest.approx(0.85)
    with pytest.raises(ValueError, match="rank_by"):
        client.recommend("nobody", history=["i00"], rank_by="clicks")


def test_exclusions_and_history_exclusion(client):
    assert ids(client.recommend("nobody", k=3, history=["i00"], exclude=["i04"])) == ["i03", "i02", "i19"]
    with_history = ids(client.recommend("nobody", k=20, history=["i00"], exclude_history=False))
    assert "i00" in with_history
    without = ids(client.recommend("nobody", k=20, history=["i00"]))
    assert "i00" not in without and len(without) == 19
    # A known user's stored history ([i05] for u1) is dropped by the model itself.
    assert "i05" not in ids(client.recommend("u1", k=20))


def test_genre_filter(client):
    recs = client.recommend("nobody", k=6, history=["i00"], item_filter={"item_genres": "Comedy"})
    # Comedy: cluster 0 and cluster 2 (Action|Comedy), by engagement.
    assert ids(recs) == ["i04", "i03", "i02", "i01", "i14", "i13"]
    assert all("Comedy" in r.features["item_genres"].split(names.MULTI_VALUE_JOIN) for r in recs)
    # Short key, case-insensitive, any of several values; two features must both match.
    recs = client.recommend("nobody", k=20, history=["i00"], item_filter={"genres": ["horror", "drama"]})
    assert set(ids(recs)) == set(ITEMS[5:10] + ITEMS[15:20])
    recs = client.recommend("nobody", k=20, history=["i00"],
                            item_filter={"item_genres": "Horror", "item_release_year": "2009"})
    assert ids(recs) == ["i19"]
    with pytest.raises(ValueError, match="item_colour"):
        client.recommend("nobody", history=["i00"], item_filter={"colour": "red"})


def test_mmr_diversity(client):
    plain = client.recommend("nobody", k=3, history=["i00"])
    assert ids(plain) == ["i04", "i03", "i02"]
    assert ids(client.recommend("nobody", k=3, history=["i00"], diversity=0.0)) == ids(plain)
    # lambda .5: after i04, its near-parallel cluster mates lose to i19 (cos .30 to
    # i04), then to i10 (orthogonal to both); scores keep the ranking's values.
    diverse = client.recommend("nobody", k=3, history=["i00"], diversity=0.5)
    assert ids(diverse) == ["i04", "i19", "i10"]
    assert [r.score for r in diverse] == pytest.approx([0.9, 0.65, 0.20])

    def mean_pairwise_cos(item_ids):
        e = EMBEDDINGS[[ITEMS.index(i) for i in item_ids]]
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        return sim[np.triu_indices(len(item_ids), 1)].mean()

    assert mean_pairwise_cos(ids(diverse)) < mean_pairwise_cos(ids(plain)) - 0.5
    # More diversity never brings the near-duplicates back.
    assert ids(client.recommend("nobody", k=3, history=["i00"], diversity=0.9))[0] == "i04"


def test_mmr_order_unit():
    rel = np.array([1.0, 0.9, 0.5])
    sim = np.array([[1.0, 0.99, 0.0], [0.99, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert mmr_order(rel, sim, 3, 0.0) == [0, 1, 2]
    assert mmr_order(rel, sim, 3, 0.5) == [0, 2, 1]
    assert mmr_order(rel, sim, 5, 0.5) == [0, 2, 1]


def test_reasons_name_the_nearest_history_item(client):
    recs = client.recommend("nobody", k=20, history=["i00", "i10"], explain=True)
    by_id = {r.item_id: r for r in recs}
    assert by_id["i04"].similar_to[0][0] == "i00"
    assert by_id["i04"].reason.startswith('similar to i00 "Item 00" (')
    assert by_id["i13"].similar_to[0][0] == "i10"
    assert "i10" in by_id["i13"].reason
    # i19 = 0.2 u0 + 0.6 u3: near i00 only (orthogonal to i10, so i10 is not named).
    assert [h for h, _ in by_id["i19"].similar_to] == ["i00"]
    assert by_id["i04"].similar_to[0][1] == pytest.approx(0.6 / math.hypot(0.6, 0.2), abs=1e-4)
    # Known user with no history sent: the one-call model names their stored history ([i05]),
    # which the two-stage client does not see (it says "matches your profile").
    stored = client.recommend("u1", k=3)
    assert ids(stored) == ["i04", "i03", "i02"]  # cluster 0 by engagement; each has cos > 0 to i05
    if client.recommender_model:
        assert all(r.reason.startswith('similar to i05 "Item 05" (') for r in stored), [r.reason for r in stored]
        assert all([h for h, _ in r.similar_to] == ["i05"] for r in stored)
    else:
        assert {r.reason for r in stored} == {REASON_PROFILE}
    # explain=False: no reasons, and no embedding call.
    assert {r.reason for r in client.recommend("nobody", k=3, history=["i00"], explain=False)} == {""}


def test_explain_score_names_the_top_feature_groups(client):
    """``explain_score``: the ranking model's explain signature for the final items; the hand-set
    attributions of tests/support/client_models.py give each item's top 3 groups by |value|."""
    ranked = client.recommend("nobody", k=4, history=["i00"], explain_score=True)
    assert ids(ranked) == ["i04", "i03", "i02", "i19"]  # the order of test_ranking_reorders_retrieval
    assert [g for g, _ in ranked[0].score_factors] == ["item_id", "item_genres", "history"]
    assert [a for _, a in ranked[0].score_factors] == pytest.approx([0.4, -0.25, 0.24])
    # i19: cluster 3's genre weighs -0.55, its history 0.2 + 0.19.
    assert ranked[3].score_factors[0][0] == "item_genres" and ranked[3].score_factors[0][1] == pytest.approx(-0.55)
    assert [g for g, _ in ranked[3].score_factors] == ["item_genres", "history", "item_id"]
    # rank_by rating: the rating's attributions (ties: the signature's group order).
    by_rating = client.recommend("nobody", k=1, history=["i00"], rank_by="rating", explain_score=True)
    assert ids(by_rating) == ["i02"]
    assert [g for g, _ in by_rating[0].score_factors] == ["item_id", "user_id", "history"]
    assert by_rating[0].score_factors[0][1] == pytest.approx(1.8)
    assert ranked[0].to_dict()["score_factors"][0] == ["item_id", pytest.approx(0.4)]
    # Off by default.
    assert all(r.score_factors == () for r in client.recommend("nobody", k=4, history=["i00"]))


def test_explain_score_is_one_extra_predict_for_the_final_items_only(server):
    """Behind the one-call model too: it has no explain signature, so the client sends the final
    items to the ranking model's (the one the one-call model wraps; the pipeline pushes both)."""
    for one_call in (names.RECOMMENDER_MODEL, None):
        recorder = Recorder()
        with RecommenderClient(server.grpc_address, timeout_s=10, recommender_model=one_call,
                               interceptors=[recorder]) as c:
            c.recommend("nobody", k=3, history=["i00"])
            assert recorder.predicts(names.EXPLAIN_SIGNATURE) == []
            recorder.calls.clear()
            c.recommend("nobody", k=3, history=["i00"], explain_score=True)
        if one_call:  # the list came from the one Predict on the one-call model, the explanation from ranking
            assert [(r.model_spec.name, r.model_spec.signature_name) for m, r in recorder.calls if m == "Predict"] == [
                (names.RECOMMENDER_MODEL, names.RECOMMEND_SIGNATURE), (names.RANKING_MODEL, names.EXPLAIN_SIGNATURE)]
        [request] = recorder.predicts(names.EXPLAIN_SIGNATURE)
        assert request.model_spec.name == names.RANKING_MODEL
        assert make_ndarray(request.inputs[names.CANDIDATE_ITEM_IDS]).astype(str).tolist() == [["i04", "i03", "i02"]]
        assert make_ndarray(request.inputs[names.HISTORY_ITEM_IDS]).astype(str).tolist() == [["i00"]]


def test_explain_scores_directly(client, retrieval_only):
    factors = client.explain_scores("nobody", ["i04", "no-such-item"], history=["i00"], top=None)
    assert list(factors) == ["i04", "no-such-item"]
    assert [g for g, _ in factors["i04"]] == ["item_id", "item_genres", "history", "user_id", "hour_of_day"]
    assert [a for _, a in factors["no-such-item"]] == [0.0] * 5  # the test model's OOV row
    assert client.explain_scores("nobody", []) == {}
    with pytest.raises(ValueError, match="head"):
        client.explain_scores("nobody", ["i04"], head="clicks")
    with pytest.raises(ValueError, match="ranking model"):
        retrieval_only.recommend("nobody", history=["i00"], explain_score=True)


def test_popularity_fallback_for_unknown_user_without_history(client, retrieval_only):
    # The 5 most popular: i10..i14 (100 .. 80); ranked by engagement i14 > i13 > i12.
    recs = client.recommend("stranger", k=3, num_candidates=5)
    assert ids(recs) == ["i14", "i13", "i12"]
    assert {r.source for r in recs} == {SOURCE_POPULAR}
    assert {r.reason for r in recs} == {REASON_POPULAR}
    assert [r.retrieval_score for r in recs] == pytest.approx([80, 85, 90])
    plain = retrieval_only.recommend("stranger", k=3)
    assert ids(plain) == ["i10", "i11", "i12"]
    assert [r.score for r in plain] == pytest.approx(POPULARITY[[10, 11, 12]])
    # Filters apply to the fallback too.
    assert ids(retrieval_only.recommend("stranger", k=2, item_filter={"item_genres": "Horror"})) == ["i15", "i16"]
    # An unknown user WITH history gets personal (retrieval) results.
    assert retrieval_only.recommend("stranger", k=1, history=["i00"])[0].source == "retrieval"


def test_one_call_is_one_predict_with_every_input(server):
    recorder = Recorder()
    with RecommenderClient(server.grpc_address, timeout_s=10, interceptors=[recorder]) as c:
        assert c.recommender_model == names.RECOMMENDER_MODEL  # the default for "retrieval"
        recs = c.recommend("nobody", k=2, history=["i00"], context={"hour_of_day": 13}, exclude=["i04"],
                           item_filter={"genres": "Comedy"}, rank_by="rating", diversity=0.25)
        assert [m for m, _ in recorder.calls] == ["GetModelMetadata", "Predict"]
        (request,) = recorder.predicts(names.RECOMMEND_SIGNATURE)
        assert request.model_spec.name == names.RECOMMENDER_MODEL
        inputs = {k: make_ndarray(v) for k, v in request.inputs.items()}
        assert set(inputs) == set(c.signature(names.RECOMMENDER_MODEL, names.RECOMMEND_SIGNATURE).inputs)
        assert inputs[names.K].tolist() == [2] and inputs[names.NUM_CANDIDATES].tolist() == [100]
        assert inputs[names.EXCLUDE_ITEM_IDS].tolist() == [["i04"]] and inputs[names.RANK_BY].tolist() == ["rating"]
        assert inputs[names.filter_input("item_genres")].tolist() == [["comedy"]]
        assert inputs[names.filter_input("item_title")].tolist() == [[""]]  # no filter
        assert inputs[names.DIVERSITY].tolist() == [0.25] and inputs[names.HOUR_OF_DAY].tolist() == [13]
        assert np.isnan(inputs["user_age"][0]) and inputs["user_country"].tolist() == [""]
        # Rating order among the Comedy items without i04: i02 (4.8), i01 (4.2), then MMR's pick.
        assert ids(recs)[0] == "i02" and len(recs) == 2
        c.recommend("nobody", k=2, history=["i00"])
        assert [m for m, _ in recorder.calls].count("GetModelMetadata") == 1  # cached
        with pytest.raises(ValueError, match="item_colour"):
            c.recommend("nobody", history=["i00"], item_filter={"colour": "red"})
        # A one-call model named explicitly must be served: no silent fallback.
    with RecommenderClient(server.grpc_address, timeout_s=10, recommender_model="no_such_recommender") as c:
        with pytest.raises(RecommenderError) as info:
            c.recommend("nobody", k=2, history=["i00"])
        assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_auto_falls_back_to_two_stage_where_no_recommender_is_served(tmp_path, caplog):
    srv = ModelServer(save_models(str(tmp_path / "models")), grpc_port=0, rest_port=None, metrics_port=None)
    srv.start()
    try:
        srv.wait_until_available(120)
        recorder = Recorder()
        with RecommenderClient(srv.grpc_address, timeout_s=10, interceptors=[recorder]) as c:
            with caplog.at_level("WARNING", logger="serving.client"):
                assert ids(c.recommend("nobody", k=4, history=["i00"])) == ["i04", "i03", "i02", "i19"]
            assert "not served" in caplog.text and names.RECOMMENDER_MODEL in caplog.text
            assert ids(c.recommend("nobody", k=2, history=["i00"])) == ["i04", "i03"]
            asked = [r.model_spec.name for m, r in recorder.calls if m == "GetModelMetadata"]
            assert asked.count(names.RECOMMENDER_MODEL) == 1  # not asked again within the minute
    finally:
        srv.stop(grace_s=0.5)


def test_user_feature_defaults_from_metadata(server):
    recorder = Recorder()
    with RecommenderClient(server.grpc_address, timeout_s=10, interceptors=[recorder], recommender_model=None) as c:
        c.recommend("nobody", k=2, history=["i00"], context={"hour_of_day": 13})
        (request,) = recorder.predicts(names.RECOMMEND_SIGNATURE)
        inputs = {k: make_ndarray(v) for k, v in request.inputs.items()}
        assert set(inputs) == set(c.signature(names.RETRIEVAL_MODEL, names.RECOMMEND_SIGNATURE).inputs)
        assert np.isnan(inputs["user_age"][0]) and inputs["user_age"].dtype == np.float32
        assert inputs["user_country"].tolist() == [""]
        assert inputs[names.HOUR_OF_DAY].tolist() == [13] and inputs[names.HOUR_OF_DAY].dtype == np.int64
        assert inputs[names.DAY_OF_WEEK].tolist() == [-1]
        assert inputs[names.HOURS_SINCE_PREV_EVENT].tolist() == [-1.0]
        assert inputs[names.K].dtype == np.int32 and inputs[names.K].tolist() == [100]
        assert inputs[names.HISTORY_ITEM_IDS].tolist() == [["i00"]]
        (score,) = recorder.predicts(names.SCORE_SIGNATURE)
        assert np.isnan(make_ndarray(score.inputs["user_age"])[0])
        assert make_ndarray(score.inputs[names.CANDIDATE_ITEM_IDS]).shape == (1, 19)
        # Metadata is fetched once per model.
        c.recommend("nobody", k=2, history=["i00"])
        assert [m for m, _ in recorder.calls].count("GetModelMetadata") == 2

        recorder.calls.clear()
        # Given features are cast to the signature's dtype ("fr" boosts cluster 2).
        top = c.recommend("nobody", k=1, history=["i00"], user_features={"country": "fr", "user_age": 31})
        (request,) = recorder.predicts(names.RECOMMEND_SIGNATURE)
        assert make_ndarray(request.inputs["user_age"]).tolist() == [31.0]
        assert make_ndarray(request.inputs["user_country"]).tolist() == ["fr"]
    with RecommenderClient(server.grpc_address, timeout_s=10, ranking_model=None) as c:
        assert c.recommend("nobody", k=1, history=["i00"], user_features={"country": "fr"})[0].item_id == "i10"
        with pytest.raises(ValueError, match="user_shoe_size"):
            c.recommend("nobody", history=["i00"], user_features={"shoe_size": 42})
    assert top


def test_similar_items(client):
    similar = client.similar_items("i00", k=3)
    assert [i for i, _ in similar] == ["i01", "i02", "i03"]
    assert similar[0][1] > similar[1][1] > similar[2][1] > 0.9


# -- errors, deadlines, retries ---------------------------------------------------------


def test_invalid_argument_is_not_retried(server):
    recorder = Recorder()
    with RecommenderClient(server.grpc_address, timeout_s=10, interceptors=[recorder]) as c:
        with pytest.raises(RecommenderError) as info:
            c.predict(names.RETRIEVAL_MODEL, names.POPULAR_SIGNATURE, {names.K: [3], "bogus": [1.0]})
        err = info.value
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.attempts == 1
        assert f"{names.RETRIEVAL_MODEL}/{names.POPULAR_SIGNATURE}" in str(err)
        assert isinstance(err.__cause__, grpc.RpcError)
        assert len(recorder.predicts(names.POPULAR_SIGNATURE)) == 1

        with pytest.raises(RecommenderError) as info:
            c.signatures("no_such_model")
        assert info.value.code == grpc.StatusCode.NOT_FOUND and info.value.attempts == 1
        assert "no_such_model" in str(info.value)


def test_unavailable_is_retried_within_the_deadline():
    recorder = Recorder()
    with RecommenderClient(f"127.0.0.1:{free_port()}", timeout_s=2.0, max_retries=2, retry_backoff_s=0.05,
                           interceptors=[recorder]) as c:
        start = time.monotonic()
        with pytest.raises(RecommenderError) as info:
            c.recommend("42", k=3)
        elapsed = time.monotonic() - start
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.attempts == 3 and len(recorder.calls) == 3
    assert info.value.model == names.RECOMMENDER_MODEL  # the one-call model is asked first
    assert elapsed < 2.5


class _SlowService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, release: threading.Event):
        self.release, self.calls = release, 0

    def GetModelMetadata(self, request, context):
        self.calls += 1
        self.release.wait(5)
        context.abort(grpc.StatusCode.INTERNAL, "released")

    def Predict(self, request, context):
        return self.GetModelMetadata(request, context)


def test_deadline_on_a_slow_server():
    release = threading.Event()
    service = _SlowService(release)
    slow = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, slow)
    port = slow.add_insecure_port("127.0.0.1:0")
    slow.start()
    try:
        with RecommenderClient(f"127.0.0.1:{port}", timeout_s=0.3) as c:
            start = time.monotonic()
            with pytest.raises(RecommenderError) as info:
                c.recommend("42", k=3)
            elapsed = time.monotonic() - start
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.attempts == 1 and service.calls == 1
        assert 0.25 < elapsed < 1.5
    finally:
        release.set()
        slow.stop(0)


def test_bad_arguments(client):
    with pytest.raises(ValueError, match="k must be"):
        client.recommend("nobody", k=0)
    with pytest.raises(ValueError, match="diversity"):
        client.recommend("nobody", diversity=1.5)
    with pytest.raises(ValueError, match="context"):
        client.recommend("nobody", context={"weather": "rain"})


def test_recommendation_to_dict_is_json_safe():
    rec = Recommendation("i1", score=-math.inf, retrieval_score=1.0, features={"item_title": "T"})
    d = rec.to_dict()
    assert d["score"] is None and d["features"] == {"item_title": "T"}
    json.dumps(d)
    hash(rec)  # frozen and hashable despite the features dict


# -- CLI -------------------------------------------------------------------------------


def test_neutral_values_are_one_table_for_client_warmup_and_bench():
    """names.neutral_value is the contract; the client's per-input default and the one-call
    model's warmup inputs read it (so a changed neutral value reaches both)."""
    from tensorflow.core.framework import types_pb2

    from serving.client_tensors import TensorMeta
    from trainer.recommender.export import neutral_inputs

    assert names.neutral_value(names.HOUR_OF_DAY) == -1 and names.neutral_value(names.NUM_CANDIDATES) == 0
    assert math.isnan(names.neutral_value("user_age", is_float=True)) and names.neutral_value("user_country") == ""
    assert names.neutral_value(names.filter_input("item_genres")) == ""
    for required in (names.USER_ID, names.K, names.CANDIDATE_ITEM_IDS):
        with pytest.raises(KeyError, match="must be sent"):
            names.neutral_value(required)
    meta = TensorMeta(name=names.HOURS_SINCE_PREV_EVENT, dtype=types_pb2.DT_FLOAT, shape=(-1,))
    assert meta.neutral_value() == -1.0 and isinstance(meta.neutral_value(), float)
    assert TensorMeta(name=names.DIVERSITY, dtype=types_pb2.DT_FLOAT, shape=(-1,)).neutral_value() == 0.0
    warm = neutral_inputs(2, ["item_genres"])
    assert warm[names.NUM_CANDIDATES].tolist() == [0, 0] and warm[names.DIVERSITY].tolist() == [0.0, 0.0]
    assert warm[names.filter_input("item_genres")].tolist() == [[b""], [b""]]


def test_cli_prints_a_table(server, capsys):
    rc = cli_main(["--user", "nobody", "--history", "i00", "--k", "3", "--target", server.grpc_address])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("3 recommendation(s) for user nobody")
    header = lines[1].split()
    assert header == ["#", "item", "title", "score", "rating", "engagement", "reason"]
    rows = lines[3:]
    assert [r.split()[1] for r in rows] == ["i04", "i03", "i02"]
    assert "Item 04" in rows[0] and "0.900" in rows[0] and "similar to i00" in rows[0]
    # Fixed width: the columns line up.
    assert len({line.index("Item") for line in rows}) == 1


def test_cli_explain_score(server, capsys):
    rc = cli_main(["--user", "nobody", "--history", "i00", "--k", "2", "--explain-score", "--target", server.grpc_address])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[1].split()[-2:] == ["score", "factors"]
    assert lines[3].split()[1] == "i04" and lines[3].endswith("item_id +0.40, item_genres -0.25, history +0.24")
    assert lines[4].split()[1] == "i03" and lines[4].endswith("item_id +0.30, item_genres -0.25, history +0.23")
    rc = cli_main(["--user", "nobody", "--history", "i00", "--k", "1", "--explain-score", "--json",
                   "--target", server.grpc_address])
    assert rc == 0
    [rec] = json.loads(capsys.readouterr().out)
    assert [g for g, _ in rec["score_factors"]] == ["item_id", "item_genres", "history"]
    # Without the flag: no column, no factors.
    rc = cli_main(["--user", "nobody", "--history", "i00", "--k", "1", "--target", server.grpc_address])
    assert rc == 0 and "factors" not in capsys.readouterr().out
    assert cli_main(["--user", "nobody", "--no-rank", "--explain-score", "--target", server.grpc_address]) == 2
    assert "ranking model" in capsys.readouterr().err


def test_cli_options_and_json(server, capsys):
    rc = cli_main(["recommend", "--user", "nobody", "--history", "i00", "--k", "6", "--target", server.grpc_address,
                   "--filter", "item_genres=Comedy", "--exclude", "i04,i03", "--no-rank", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["item_id"] for d in data] == ["i01", "i02", "i10", "i11", "i12", "i13"]
    assert data[0]["rating"] is None and data[0]["features"]["item_title"] == "Item 01"

    rc = cli_main(["--user", "nobody", "--history", "i00", "--k", "3", "--diversity", "0.5",
                   "--target", server.grpc_address])
    assert rc == 0
    assert [r.split()[1] for r in capsys.readouterr().out.splitlines()[3:]] == ["i04", "i19", "i10"]
    # Forced two stages: the same list.
    rc = cli_main(["--user", "nobody", "--history", "i00", "--k", "3", "--diversity", "0.5",
                   "--recommender-model", "none", "--target", server.grpc_address])
    assert rc == 0
    assert [r.split()[1] for r in capsys.readouterr().out.splitlines()[3:]] == ["i04", "i19", "i10"]


def test_cli_errors(capsys):
    assert cli_main(["--user", "1", "--target", f"127.0.0.1:{free_port()}", "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert cli_main(["--k", "3"]) == 2  # --user missing
    assert cli_main(["--user", "1", "--filter", "nonsense"]) == 2
