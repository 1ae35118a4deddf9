"""Recommendations over TF Serving's gRPC API: one call, or the two stages.

`RecommenderClient` talks to any TF-Serving-compatible server (the project's
`serving.model_server` or `tensorflow_model_server`) with the official
`PredictionService` stub.

By default one `recommend()` is one Predict on the one-call model that wraps the
retrieval model (names.RECOMMENDER_OF: `recommender` for `retrieval`,
`recommender_brute_force` for `retrieval_brute_force`; trainer/recommender/export.py),
which does every step below in the server. Where that model is not served (NOT_FOUND)
the client logs a warning and runs the same steps itself over the separate
models (3-5 RPCs), and tries the one-call model again a minute later;
`recommender_model=None` always runs them here. The steps:

1. retrieval: `retrieval.recommend` for `num_candidates` items (over-fetched so
   exclusions and filters still leave k); for an unknown user with no history
   (`known_user` false) the `popular` signature answers instead;
2. drops excluded ids (and the given history when `exclude_history`), applies
   `item_filter` on the `item_features` signature's strings;
3. ranking: `ranking.score` on what is left (skipped when `ranking_model` is None),
   final score by `rank_by` ("engagement", "rating" or "blend");
4. optional MMR diversity re-rank (lambda = 1 - diversity) on the cosine of the
   `candidate_embedding` vectors, then the top k;
5. a reason per item: the history items closest to it in embedding space,
   "popular with all users" for the fallback, or "matches your profile".

On request only (`recommend(..., explain_score=True)`, or `explain_scores()`), one more
Predict on the ranking model's `explain` signature for the final items: the feature groups
(user_id, history, item_genres ...) that contributed most to each item's ranking score, by
gradient x input (trainer/ranking/model.py `RankingModel.explain_encoded`). On both paths:
the one-call model has no explain signature, so `ranking_model` must be served beside it
(README "Serving": a ranking version pushed without a new one-call model explains with a
newer ranking model than the one that ordered the list).

TLS: `root_cert_file` (PEM roots to verify the server; or any `credentials`);
a server started with --auth_token_file needs `token`, sent as
`authorization: Bearer <token>` metadata on every call.

Every RPC carries a deadline (`timeout_s`, retries included). Only UNAVAILABLE is
retried (a few times, exponential backoff with jitter): these calls are
idempotent reads. Any failure surfaces as `RecommenderError` naming the model
and signature, chained to the `grpc.RpcError`.

Inputs are filled from the signatures GetModelMetadata reports (cached per
model): user side features (`user_<name>`) the caller does not give get their
"unknown" value ("" or NaN), context features -1. Names come from serving/names.py.

Example:
    with RecommenderClient("localhost:8500") as client:
        for rec in client.recommend("42", k=10, item_filter={"item_genres": "Comedy"}):
            print(rec.item_id, rec.score, rec.reason)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import grpc
import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from serving import names
from serving.client_tensors import SignatureMeta, make_ndarray, make_tensor_proto, parse_signature_defs
from serving import features as F

log = logging.getLogger(__name__)

RANK_BY = names.RANK_BY_VALUES
REASON_POPULAR = names.REASON_POPULAR
REASON_PROFILE = names.REASON_PROFILE
SOURCE_RETRIEVAL = names.SOURCE_RETRIEVAL
SOURCE_POPULAR = names.SOURCE_POPULAR
AUTO = "auto"  # recommender_model: the one-call model of the retrieval model (names.RECOMMENDER_OF)
_ONE_CALL_RETRY_S = 60.0  # after NOT_FOUND, two-stage calls for this long before trying again

_SIGNATURE_DEF_FIELD = "signature_def"
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# Codes after which cached metadata may be stale (a new model version was loaded).
_STALE_METADATA = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})
DEFAULT_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


class RecommenderError(Exception):
    """A call to the model server failed.

    Attributes:
        code: the grpc.StatusCode (None for a malformed answer).
        model, signature: what was being called.
        attempts: how many times the RPC was sent.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None, model: str | None = None,
                 signature: str | None = None, attempts: int = 1):
        super().__init__(message)
        self.code, self.model, self.signature, self.attempts = code, model, signature, attempts

    def __str__(self) -> str:
        code = f"[{self.code.name}] " if self.code is not None else ""
        return f"{code}{self.args[0]}"


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """One recommended item.

    Attributes:
        item_id: the item.
        score: the final score the list is ordered by (before the diversity
            re-rank): engagement / rating / blend when ranked, else the retrieval
            score (the popularity count for the fallback).
        retrieval_score: the stage-1 score (dot product, or popularity count).
        rating, engagement: the ranking model's outputs (None without ranking).
        features: the item's side features as strings (item_title, item_genres ...).
        reason: why it was recommended, for people.
        similar_to: (history item id, cosine) pairs behind the reason, closest first.
        source: "retrieval" or "popular" (the fallback).
        score_factors: with ``explain_score``: the feature groups that contributed most to the
            ranking score, (group, attribution) by decreasing |attribution|: gradient x input of
            the engagement logit (of the rating for rank_by="rating"); positive pushed the item
            up. First-order and relative to an all-zero encoding, not a decomposition of the score.
    """

    item_id: str
    score: float
    retrieval_score: float
    rating: float | None = None
    engagement: float | None = None
    features: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False, compare=False)
    reason: str = ""
    similar_to: tuple[tuple[str, float], ...] = ()
    source: str = SOURCE_RETRIEVAL
    score_factors: tuple[tuple[str, float], ...] = ()

    @property
    def title(self) -> str | None:
        return self.features.get(F.item_feature("title")) or None

    def to_dict(self) -> dict:
        """JSON-friendly (non-finite floats become None)."""
        d = dataclasses.asdict(self)
        d["features"] = dict(self.features)
        d["similar_to"] = [[i, s] for i, s in self.similar_to]
        d["score_factors"] = [[g, a if math.isfinite(a) else None] for g, a in self.score_factors]
        for key in ("score", "retrieval_score", "rating", "engagement"):
            if d[key] is not None and not math.isfinite(d[key]):
                d[key] = None
        return d


def _normalize_keys(given: Mapping | None, prefix: str) -> dict:
    """{"age": 3, "user_gender": "F"} -> {"user_age": 3, "user_gender": "F"}."""
    return {(k if k.startswith(prefix) else prefix + k): v for k, v in (given or {}).items()}


def _cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, D] x [m, D] -> [n, m] cosines (0 where a vector is zero)."""
    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    return unit(a) @ unit(b).T


def mmr_order(relevance: np.ndarray, similarity: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: greedy picks of argmax lambda*rel - (1-lambda)*max sim to picked.

    Args:
        relevance: [n] scores, higher is better (any scale: min-max normalized here).
        similarity: [n, n] pairwise similarities.
        k: how many to pick.
        diversity: 1 - lambda, in [0, 1]; 0 returns the relevance order.
    Returns:
        Indices into relevance, in pick order (ties: the earlier index).
    """
    n = len(relevance)
    k = min(k, n)
    rel = np.asarray(relevance, dtype=np.float64)
    finite = np.isfinite(rel)
    if finite.any():
        lo, hi = rel[finite].min(), rel[finite].max()
        rel = np.where(finite, (rel - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    else:
        rel = np.zeros(n)
    lam = 1.0 - diversity
    picked: list[int] = []
    max_sim = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0) if picked else np.zeros(n)
        objective = lam * rel - (1.0 - lam) * penalty
        objective = np.where(available, objective, -np.inf)
        best = int(np.argmax(objective))
        picked.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, similarity[:, best])
    return picked


def _context_values(context: Mapping | None) -> dict:
    """Caller context -> {hour_of_day, day_of_week, hours_since_prev_event}.

    Accepts those three names and "timestamp" (unix seconds or a datetime), from
    which hour_of_day / day_of_week are derived in UTC as the example builder does.
    """
    values = {}
    for key, value in (context or {}).items():
        if key == F.TIMESTAMP:
            when = value if isinstance(value, _dt.datetime) else _dt.datetime.fromtimestamp(float(value), _dt.timezone.utc)
            if when.tzinfo is not None:
                when = when.astimezone(_dt.timezone.utc)
            values.setdefault(names.HOUR_OF_DAY, when.hour)
            values.setdefault(names.DAY_OF_WEEK, when.weekday())
        elif key in F.CONTEXT_FEATURES:
            values[key] = value
        else:
            raise ValueError(f"unknown context key {key!r}; use {sorted(F.CONTEXT_FEATURES + (F.TIMESTAMP,))}")
    return values


class RecommenderClient:
    """gRPC client for the one-call recommender, or the retrieval + ranking models.

    Args:
        target: host:port of the model server's gRPC endpoint.
        timeout_s: deadline of each logical call, retries included.
        retrieval_model: model with recommend / popular / item_features /
            candidate_embedding (names.RETRIEVAL_MODEL or RETRIEVAL_BRUTE_FORCE_MODEL).
        ranking_model: model with the score signature; None: no ranking stage
            (retrieval order, always two-stage).
        recommender_model: the one-call model `recommend()` uses: AUTO (default) is
            names.RECOMMENDER_OF[retrieval_model] (none for another retrieval model);
            None: always the two stages. It must wrap the same retrieval and ranking
            models (the pipeline pushes them together).
        channel_options: grpc channel options.
        credentials: grpc.ChannelCredentials for TLS; None: plaintext (or root_cert_file).
        root_cert_file: PEM root certificates to verify the server's TLS
            certificate with (turns TLS on); instead of credentials.
        token: shared token for a server started with --auth_token_file.
        max_retries: extra attempts after UNAVAILABLE.
        retry_backoff_s: first backoff; doubles per retry, with jitter.
        interceptors: grpc client interceptors (tracing, auth, tests).
    """

    def __init__(self, target: str, timeout_s: float = 5.0, retrieval_model: str = names.RETRIEVAL_MODEL,
                 ranking_model: str | None = names.RANKING_MODEL,
                 channel_options: Sequence[tuple[str, object]] = DEFAULT_CHANNEL_OPTIONS,
                 credentials: grpc.ChannelCredentials | None = None, max_retries: int = 2,
                 retry_backoff_s: float = 0.05, interceptors: Sequence = (), root_cert_file: str | None = None,
                 token: str | None = None, recommender_model: str | None = AUTO):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if root_cert_file is not None:
            if credentials is not None:
                raise ValueError("pass either credentials or root_cert_file, not both")
            try:
                with open(root_cert_file, "rb") as f:
                    credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            except OSError as e:
                raise ValueError(f"cannot read root_cert_file {root_cert_file!r}: {e}") from e
        self._call_metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.target, self.timeout_s = target, float(timeout_s)
        self.retrieval_model, self.ranking_model = retrieval_model, ranking_model
        self._auto = recommender_model == AUTO
        if self._auto:
            recommender_model = names.RECOMMENDER_OF.get(retrieval_model)
        self.recommender_model = recommender_model if ranking_model is not None else None
        self._one_call_retry_at = 0.0  # monotonic time before which AUTO does not try the one-call model
        self.max_retries, self.retry_backoff_s = int(max_retries), float(retry_backoff_s)
        options = list(channel_options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        channel = grpc.intercept_channel(self._channel, *interceptors) if interceptors else self._channel
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self._metadata: dict[str, dict[str, SignatureMeta]] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- RPC plumbing ----------------------------------------------------------

    def _call(self, method: str, request, model: str, signature: str | None):
        """Sends one idempotent RPC with a deadline, retrying only UNAVAILABLE."""
        what = f"{method} {model}" + (f"/{signature}" if signature else "") + f" at {self.target}"
        deadline = time.monotonic() + self.timeout_s
        attempts = 0
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise RecommenderError(f"{what}: deadline of {self.timeout_s:g}s spent before attempt {attempts}",
                                           grpc.StatusCode.DEADLINE_EXCEEDED, model, signature, attempts - 1)
                return getattr(self._stub, method)(request, timeout=remaining, metadata=self._call_metadata)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                backoff = self.retry_backoff_s * (2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
                if (code in _RETRYABLE and attempts <= self.max_retries
                        and deadline - time.monotonic() > backoff):
                    log.debug("%s: %s, retrying in %.3fs", what, code.name, backoff)
                    time.sleep(backoff)
                    continue
                if code in _STALE_METADATA:
                    self.invalidate_metadata(model)
                details = e.details() if hasattr(e, "details") else str(e)
                raise RecommenderError(f"{what} failed after {attempts} attempt(s): {details}",
                                       code, model, signature, attempts) from e

    def invalidate_metadata(self, model: str | None = None) -> None:
        """Forgets cached signatures (of one model, or all)."""
        with self._lock:
            if model is None:
                self._metadata.clear()
            else:
                self._metadata.pop(model, None)

    def signatures(self, model: str) -> dict[str, SignatureMeta]:
        """The model's signatures from GetModelMetadata (cached)."""
        with self._lock:
            cached = self._metadata.get(model)
        if cached is not None:
            return cached
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.metadata_field.append(_SIGNATURE_DEF_FIELD)
        response = self._call("GetModelMetadata", request, model, None)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        if _SIGNATURE_DEF_FIELD not in response.metadata or not response.metadata[_SIGNATURE_DEF_FIELD].Unpack(sig_map):
            raise RecommenderError(f"GetModelMetadata {model}: the answer has no signature_def metadata",
                                   None, model, None)
        parsed = parse_signature_defs(sig_map)
        with self._lock:
            self._metadata[model] = parsed
        return parsed

    def signature(self, model: str, signature: str) -> SignatureMeta:
        sigs = self.signatures(model)
        if signature not in sigs:
            raise RecommenderError(f"model {model!r} has no signature {signature!r}; it has {sorted(sigs)}",
                                   grpc.StatusCode.FAILED_PRECONDITION, model, signature, 0)
        return sigs[signature]

    def has_signature(self, model: str, signature: str) -> bool:
        return signature in self.signatures(model)

    def predict(self, model: str, signature: str, inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Low-level Predict: inputs (ndarrays / lists) -> outputs as ndarrays.

        Input dtypes come from the signature's metadata when it lists the input;
        otherwise from the array itself (so a wrong input reaches the server,
        which rejects it with INVALID_ARGUMENT).
        """
        meta = self.signature(model, signature)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            spec = meta.inputs.get(key)
            request.inputs[key].CopyFrom(make_tensor_proto(value, spec.dtype if spec else _dtype_of(value)))
        response = self._call("Predict", request, model, signature)
        try:
            return {key: make_ndarray(proto) for key, proto in response.outputs.items()}
        except Exception as e:
            raise RecommenderError(f"Predict {model}/{signature}: cannot decode the answer: {e}",
                                   None, model, signature) from e

    # -- inputs ----------------------------------------------------------------

    def _query_inputs(self, meta: SignatureMeta, user_id: str, history: Sequence[str], context: dict,
                      user_features: dict, extra: Mapping[str, object]) -> dict[str, object]:
        """One row of inputs for a query signature, every input filled (neutral when not given)."""
        inputs: dict[str, object] = {}
        for key, spec in meta.inputs.items():
            if key in extra:
                inputs[key] = extra[key]
            elif key == names.USER_ID:
                inputs[key] = [user_id]
            elif key == names.HISTORY_ITEM_IDS:
                inputs[key] = [list(history) or [""]]
            elif key in context:
                inputs[key] = [context[key]]
            elif key in user_features:
                inputs[key] = [user_features[key]]
            else:
                inputs[key] = [spec.neutral_value()]  # names.neutral_value: context -1, user_<name> "" or NaN
        return inputs

    def _check_user_features(self, meta: SignatureMeta, user_features: dict, model: str | None = None) -> None:
        accepted = sorted(k for k in meta.inputs if k.startswith(F.USER_FEATURE_PREFIX) and k != names.USER_ID)
        unknown = sorted(set(user_features) - set(accepted))
        if unknown:
            raise ValueError(f"unknown user feature(s) {unknown}; model {model or self.retrieval_model!r} "
                             f"accepts {accepted}")

    # -- stages ------------------------------------------------------------------

    def item_features(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """{item id: {feature: value}} for the known items among item_ids."""
        ids = list(dict.fromkeys(item_ids))
        if not ids or not self.has_signature(self.retrieval_model, names.ITEM_FEATURES_SIGNATURE):
            return {}
        out = self.predict(self.retrieval_model, names.ITEM_FEATURES_SIGNATURE, {names.ITEM_IDS_INPUT: ids})
        known = out.pop(names.OUT_KNOWN_ITEM, np.ones(len(ids), dtype=bool))
        return {item: {k: str(v[i]) for k, v in sorted(out.items())} for i, item in enumerate(ids) if known[i]}

    def candidate_embeddings(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """{item id: embedding} (unknown items get the model's out-of-vocabulary vector)."""
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return {}
        out = self.predict(self.retrieval_model, names.CANDIDATE_EMBEDDING_SIGNATURE, {names.ITEM_IDS_INPUT: ids})
        emb = np.asarray(out[names.OUT_EMBEDDING], dtype=np.float64)
        return {item: emb[i] for i, item in enumerate(ids)}

    def popular(self, k: int = 10) -> list[tuple[str, float]]:
        """The k most popular training items with their interaction counts."""
        out = self.predict(self.retrieval_model, names.POPULAR_SIGNATURE, {names.K: [int(k)]})
        return _row_items(out[names.OUT_ITEM_IDS][0], out[names.OUT_SCORES][0])

    def _retrieve(self, user_id, history, context, user_features, num_candidates, exclude_history):
        meta = self.signature(self.retrieval_model, names.RECOMMEND_SIGNATURE)
        inputs = self._query_inputs(meta, user_id, history, context, user_features,
                                    {names.K: [num_candidates], names.EXCLUDE_HISTORY: [bool(exclude_history)]})
        out = self.predict(self.retrieval_model, names.RECOMMEND_SIGNATURE, inputs)
        known = bool(np.asarray(out.get(names.OUT_KNOWN_USER, [True])).reshape(-1)[0])
        return _row_items(out[names.OUT_ITEM_IDS][0], out[names.OUT_SCORES][0]), known

    def _rank(self, user_id, history, context, user_features, item_ids: list[str]):
        meta = self.signature(self.ranking_model, names.SCORE_SIGNATURE)
        inputs = self._query_inputs(meta, user_id, history, context, user_features,
                                    {names.CANDIDATE_ITEM_IDS: [item_ids]})
        out = self.predict(self.ranking_model, names.SCORE_SIGNATURE, inputs)
        rating = np.asarray(out[names.OUT_RATING], dtype=np.float64).reshape(-1)
        engagement = np.asarray(out[names.OUT_ENGAGEMENT], dtype=np.float64).reshape(-1)
        if len(rating) != len(item_ids) or len(engagement) != len(item_ids):
            raise RecommenderError(f"Predict {self.ranking_model}/{names.SCORE_SIGNATURE}: expected "
                                   f"{len(item_ids)} scores, got {len(rating)} / {len(engagement)}",
                                   None, self.ranking_model, names.SCORE_SIGNATURE)
        return rating, engagement

    def explain_scores(self, user_id: str, item_ids: Sequence[str], history: Sequence[str] | None = None,
                       context: dict | None = None, user_features: dict | None = None, head: str = "engagement",
                       top: int | None = 3) -> dict[str, list[tuple[str, float]]]:
        """The feature groups behind the ranking model's score of each item for this query.

        One Predict on the ranking model's ``explain`` signature (names.EXPLAIN_SIGNATURE) with
        the same query inputs as ``score``. Returns {item id: [(group, attribution), ...]}, the
        ``top`` groups (None: all) by decreasing |attribution|: gradient x input of ``head``
        ("engagement": its logit; "rating") summed over each group's encoded dimensions.
        """
        if head not in ("engagement", "rating"):
            raise ValueError(f"head must be 'engagement' or 'rating', got {head!r}")
        if self.ranking_model is None:
            raise ValueError("explain_scores needs a ranking model (ranking_model is None)")
        if top is not None and top < 1:
            raise ValueError(f"top must be >= 1 or None, got {top}")
        ids = [str(i) for i in item_ids]
        if not ids:
            return {}
        history = [str(h) for h in (history or ()) if str(h)]
        ufeats = _normalize_keys(user_features, F.USER_FEATURE_PREFIX)
        meta = self.signature(self.ranking_model, names.EXPLAIN_SIGNATURE)
        self._check_user_features(meta, ufeats, self.ranking_model)
        inputs = self._query_inputs(meta, str(user_id), history, _context_values(context), ufeats,
                                    {names.CANDIDATE_ITEM_IDS: [ids]})
        out = self.predict(self.ranking_model, names.EXPLAIN_SIGNATURE, inputs)
        key = names.OUT_RATING_ATTRIBUTIONS if head == "rating" else names.OUT_ENGAGEMENT_ATTRIBUTIONS
        try:
            groups = [str(g) for g in np.asarray(out[names.OUT_FEATURE_GROUPS])[0]]
            attr = np.asarray(out[key], dtype=np.float64)[0]
            if attr.shape != (len(ids), len(groups)):
                raise ValueError(f"{key} has shape {attr.shape}, expected {(len(ids), len(groups))}")
        except (KeyError, IndexError, ValueError) as e:
            raise RecommenderError(f"Predict {self.ranking_model}/{names.EXPLAIN_SIGNATURE}: unexpected answer: {e!r}",
                                   None, self.ranking_model, names.EXPLAIN_SIGNATURE) from e
        result = {}
        for item, row in zip(ids, attr):
            order = sorted(range(len(groups)), key=lambda g: (-abs(row[g]) if math.isfinite(row[g]) else math.inf, g))
            result[item] = [(groups[g], float(row[g])) for g in order[:top]]
        return result

    # -- the public call -------------------------------------------------------

    def recommend(self, user_id: str, k: int = 10, history: Sequence[str] | None = None,
                  context: dict | None = None, user_features: dict | None = None, num_candidates: int = 100,
                  exclude: Iterable[str] = (), exclude_history: bool = True,
                  item_filter: Mapping[str, str | Iterable[str]] | None = None, diversity: float = 0.0,
                  rank_by: str = "engagement", explain: bool = True,
                  explain_score: bool = False) -> list[Recommendation]:
        """Top-k recommendations for one user (fewer when filters leave fewer).

        Args:
            user_id: any id; unknown ids get history-based or popular items.
            k: items wanted.
            history: recent item ids, oldest first; None/empty: the model uses the
                user's stored history (known users).
            context: hour_of_day, day_of_week, hours_since_prev_event and/or timestamp.
            user_features: side features by name ("age" or "user_age"); missing ones
                are sent as unknown ("" / NaN).
            num_candidates: stage-1 size (at least k; the model may cap it).
            exclude: item ids never to return.
            exclude_history: drop the history items (the model also drops stored history).
            item_filter: {feature: value or values}: keep items whose feature (split on
                names.MULTI_VALUE_JOIN, case-insensitive) holds one of the values;
                several features must all match.
            diversity: 0..1, MMR weight of dissimilarity (0: plain ranking order).
            rank_by: "engagement", "rating" or "blend" (mean of engagement and the
                min-max normalized rating over the candidates).
            explain: compute reasons (one extra candidate_embedding call).
            explain_score: fill each item's ``score_factors`` with the 3 feature groups that
                contributed most to its ranking score (``explain_scores``: one extra Predict on
                the ranking model's explain signature, for the final items only, also when the
                list came from the one-call model; the rating's attributions for
                rank_by="rating", else the engagement's).

        Raises:
            ValueError: bad arguments (k, diversity, rank_by, unknown feature names).
            RecommenderError: a server call failed.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not 0.0 <= diversity <= 1.0:
            raise ValueError(f"diversity must be in [0, 1], got {diversity}")
        if rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
        user_id = str(user_id)
        history = [str(h) for h in (history or ()) if str(h)]
        exclude = [str(e) for e in exclude]  # read once: either path may use it
        ctx = _context_values(context)
        ufeats = _normalize_keys(user_features, F.USER_FEATURE_PREFIX)
        filters = _normalize_filter(item_filter)
        num_candidates = max(int(num_candidates), int(k))
        if explain_score and self.ranking_model is None:
            raise ValueError("explain_score needs a ranking model (ranking_model is None)")
        recs = self._recommend(user_id, int(k), history, ctx, ufeats, num_candidates, exclude, exclude_history,
                               filters, float(diversity), rank_by, explain)
        if not explain_score or not recs:
            return recs
        factors = self.explain_scores(user_id, [r.item_id for r in recs], history, context, ufeats,
                                      head="rating" if rank_by == "rating" else "engagement")
        return [dataclasses.replace(r, score_factors=tuple(factors.get(r.item_id, ()))) for r in recs]

    def _recommend(self, user_id, k, history, ctx, ufeats, num_candidates, exclude, exclude_history, filters,
                   diversity, rank_by, explain) -> list[Recommendation]:
        if self.recommender_model is not None and time.monotonic() >= self._one_call_retry_at:
            try:
                return self._recommend_one_call(user_id, k, history, ctx, ufeats, num_candidates, exclude,
                                                exclude_history, filters, diversity, rank_by, explain)
            except RecommenderError as e:
                if not (self._auto and e.code == grpc.StatusCode.NOT_FOUND):
                    raise
                log.warning("model %r is not served at %s (%s); recommending in two stages over %r and %r, "
                            "retrying it in %.0fs", self.recommender_model, self.target, e, self.retrieval_model,
                            self.ranking_model, _ONE_CALL_RETRY_S)
                self._one_call_retry_at = time.monotonic() + _ONE_CALL_RETRY_S
        return self._recommend_two_stage(user_id, k, history, ctx, ufeats, num_candidates, exclude,
                                         exclude_history, filters, diversity, rank_by, explain)

    def _recommend_one_call(self, user_id, k, history, ctx, ufeats, num_candidates, exclude, exclude_history,
                            filters, diversity, rank_by, explain) -> list[Recommendation]:
        """One Predict on the one-call model; its outputs as Recommendations."""
        model = self.recommender_model
        meta = self.signature(model, names.RECOMMEND_SIGNATURE)
        self._check_user_features(meta, ufeats, model)
        feature_keys = sorted(key[len(names.FILTER_PREFIX):] for key in meta.inputs
                              if key.startswith(names.FILTER_PREFIX))
        unknown = sorted(key for key in filters if key not in feature_keys)
        if unknown:
            raise ValueError(f"cannot filter on {unknown}: model {model!r} filters on {feature_keys}")
        extra = {
            names.K: [k], names.EXCLUDE_HISTORY: [bool(exclude_history)], names.NUM_CANDIDATES: [num_candidates],
            names.EXCLUDE_ITEM_IDS: [sorted({str(e) for e in exclude}) or [""]],
            names.RANK_BY: [rank_by], names.DIVERSITY: [diversity],
        }
        for key in feature_keys:
            extra[names.filter_input(key)] = [sorted(filters.get(key, ())) or [""]]
        out = self.predict(model, names.RECOMMEND_SIGNATURE,
                           self._query_inputs(meta, user_id, history, ctx, ufeats, extra))
        try:
            return _one_call_recommendations(out, feature_keys, explain)
        except (KeyError, IndexError, ValueError) as e:
            raise RecommenderError(f"Predict {model}/{names.RECOMMEND_SIGNATURE}: unexpected answer: {e!r}",
                                   None, model, names.RECOMMEND_SIGNATURE) from e

    def _recommend_two_stage(self, user_id, k, history, ctx, ufeats, num_candidates, exclude, exclude_history,
                             filters, diversity, rank_by, explain) -> list[Recommendation]:
        """The steps of the module docstring, over the separate models."""
        self._check_user_features(self.signature(self.retrieval_model, names.RECOMMEND_SIGNATURE), ufeats)

        # Stage 1: retrieval, or popularity for a cold user.
        candidates, known = self._retrieve(user_id, history, ctx, ufeats, num_candidates, exclude_history)
        source = SOURCE_RETRIEVAL
        if not known and not history:
            candidates, source = self.popular(num_candidates), SOURCE_POPULAR
        excluded = {str(e) for e in exclude}
        if exclude_history:
            excluded.update(history)
        candidates = [(i, s) for i, s in candidates if i not in excluded]

        # Side features (filters, titles, output), for the history's titles too.
        feats = self.item_features([i for i, _ in candidates] + history)
        if filters:
            _check_filter_keys(filters, feats, self.retrieval_model)
            candidates = [(i, s) for i, s in candidates if _matches(feats.get(i, {}), filters)]
        if not candidates:
            return []

        # Stage 2: ranking.
        ids = [i for i, _ in candidates]
        retrieval_scores = np.array([s for _, s in candidates], dtype=np.float64)
        rating = engagement = None
        if self.ranking_model is not None:
            rating, engagement = self._rank(user_id, history, ctx, ufeats, ids)
            final = _final_scores(rating, engagement, rank_by)
        else:
            final = retrieval_scores
        order = sorted(range(len(ids)), key=lambda j: (-_sortable(final[j]), j))

        # Diversity re-rank and reasons share one embedding call.
        want_emb = diversity > 0 or (explain and history and source == SOURCE_RETRIEVAL)
        emb_ids = ids if diversity > 0 else [ids[j] for j in order[:k]]
        emb = self.candidate_embeddings(emb_ids + history) if want_emb else {}
        if diversity > 0:
            pool = order
            sim = _cosine_matrix(np.stack([emb[ids[j]] for j in pool]), np.stack([emb[ids[j]] for j in pool]))
            picked = mmr_order(np.array([final[j] for j in pool]), sim, k, diversity)
            top = [pool[p] for p in picked]
        else:
            top = order[:k]

        result = []
        for j in top:
            item = ids[j]
            if source == SOURCE_POPULAR:
                reason, similar = REASON_POPULAR, ()
            elif explain:
                reason, similar = _reason(item, history, emb, feats)
            else:
                reason, similar = "", ()
            result.append(Recommendation(
                item_id=item,
                score=float(final[j]),
                retrieval_score=float(retrieval_scores[j]),
                rating=None if rating is None else float(rating[j]),
                engagement=None if engagement is None else float(engagement[j]),
                features=feats.get(item, {}),
                reason=reason,
                similar_to=similar,
                source=source,
            ))
        return result

    def similar_items(self, item_id: str, k: int = 10, exclude_self: bool = True) -> list[tuple[str, float]]:
        """Items whose candidate embeddings are closest (cosine) to item_id's, among
        what retrieval returns for a one-item history (num_candidates = 4k)."""
        candidates, _ = self._retrieve("", [item_id], {}, {}, max(4 * k, k + 1), exclude_self)
        ids = [i for i, _ in candidates if not (exclude_self and i == item_id)]
        if not ids:
            return []
        emb = self.candidate_embeddings([item_id] + ids)
        sims = _cosine_matrix(np.stack([emb[i] for i in ids]), emb[item_id][None, :])[:, 0]
        order = sorted(range(len(ids)), key=lambda j: (-sims[j], j))[:k]
        return [(ids[j], float(sims[j])) for j in order]


# -- helpers -----------------------------------------------------------------


def _dtype_of(value) -> int:
    from tensorflow.core.framework import types_pb2

    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind in "US":
        return types_pb2.DT_STRING
    mapping = {"f4": types_pb2.DT_FLOAT, "f8": types_pb2.DT_DOUBLE, "i4": types_pb2.DT_INT32,
               "i8": types_pb2.DT_INT64, "b1": types_pb2.DT_BOOL}
    key = f"{array.dtype.kind}{array.dtype.itemsize}"
    if key not in mapping:
        raise ValueError(f"cannot send an array of dtype {array.dtype}")
    return mapping[key]


def _one_call_recommendations(out: dict, feature_keys: list[str], explain: bool) -> list[Recommendation]:
    """Row 0 of the one-call model's answer (names.py: its outputs) -> Recommendations."""
    def row(key):
        return np.asarray(out[key])[0]

    ids, source = row(names.OUT_ITEM_IDS), str(row(names.OUT_SOURCE))
    score, retrieval, rating, engagement = (row(key).astype(np.float64) for key in (
        names.OUT_SCORES, names.OUT_RETRIEVAL_SCORES, names.OUT_RATING, names.OUT_ENGAGEMENT))
    reasons, sim_ids, sim_scores = row(names.OUT_REASONS), row(names.OUT_SIMILAR_ITEM_IDS), row(names.OUT_SIMILAR_SCORES)
    feats = {key: row(key) for key in feature_keys}
    result = []
    for j, item in enumerate(ids):
        item = str(item)
        if not item:
            continue
        similar = tuple((str(h), float(c)) for h, c in zip(sim_ids[j], sim_scores[j]) if str(h))
        result.append(Recommendation(
            item_id=item, score=float(score[j]), retrieval_score=float(retrieval[j]), rating=float(rating[j]),
            engagement=float(engagement[j]), features={key: str(v[j]) for key, v in feats.items()},
            reason=str(reasons[j]) if explain else "", similar_to=similar if explain else (), source=source))
    return result


def _row_items(ids: np.ndarray, scores: np.ndarray) -> list[tuple[str, float]]:
    """One output row -> [(id, score)] without the "" / -inf padding, first occurrence kept."""
    seen, items = set(), []
    for item, score in zip(ids, scores):
        item = str(item)
        if not item or item in seen or not math.isfinite(float(score)) and float(score) < 0:
            continue
        seen.add(item)
        items.append((item, float(score)))
    return items


def _sortable(x: float) -> float:
    return x if math.isfinite(x) else (-math.inf if math.isnan(x) or x < 0 else math.inf)


def _final_scores(rating: np.ndarray, engagement: np.ndarray, rank_by: str) -> np.ndarray:
    if rank_by == "engagement":
        return engagement
    if rank_by == "rating":
        return rating
    lo, hi = np.min(rating), np.max(rating)
    norm = (rating - lo) / (hi - lo) if hi > lo else np.ones_like(rating)
    return 0.5 * engagement + 0.5 * norm


def _normalize_filter(item_filter) -> dict[str, set[str]]:
    result = {}
    for key, value in (item_filter or {}).items():
        key = key if key.startswith(F.ITEM_FEATURE_PREFIX) else F.item_feature(key)
        values = [value] if isinstance(value, str) else list(value)
        if not values:
            raise ValueError(f"item_filter[{key!r}] has no values")
        result[key] = {str(v).strip().lower() for v in values}
    return result


def _check_filter_keys(filters: dict, feats: dict, model: str) -> None:
    available = set()
    for f in feats.values():
        available.update(f)
    unknown = sorted(k for k in filters if k not in available)
    if unknown and feats:
        raise ValueError(f"cannot filter on {unknown}: model {model!r} item_features has {sorted(available)}")
    if unknown:
        raise ValueError(f"cannot filter on {unknown}: no item features for the candidates of model {model!r}")


def _matches(features: Mapping[str, str], filters: dict[str, set[str]]) -> bool:
    for key, wanted in filters.items():
        have = {v.strip().lower() for v in features.get(key, "").split(names.MULTI_VALUE_JOIN)}
        if not have & wanted:
            return False
    return True


def _reason(item: str, history: list[str], emb: dict, feats: dict) -> tuple[str, tuple]:
    others = [h for h in dict.fromkeys(history) if h != item and h in emb]
    if not others or item not in emb:
        return REASON_PROFILE, ()
    sims = _cosine_matrix(emb[item][None, :], np.stack([emb[h] for h in others]))[0]
    ranked = sorted(((h, float(s)) for h, s in zip(others, sims) if s > 0), key=lambda t: -t[1])[:2]
    if not ranked:
        return REASON_PROFILE, ()
    title_key = F.item_feature("title")

    def label(h):
        title = feats.get(h, {}).get(title_key)
        return f'{h} "{title}"' if title else h

    return "similar to " + " and ".join(f"{label(h)} ({s:.2f})" for h, s in ranked), tuple(ranked)
