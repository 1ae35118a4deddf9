"""Model, signature and tensor names: the one place they are defined.

The export code (trainer/retrieval/export.py and trainer/ranking/export.py) and every client (serving/client.py, the CLI,
the benchmarks, the tests) import these, so a renamed tensor cannot drift between
the two sides. Plain Python, no TensorFlow import.
"""

from serving import features as F

# Model names: one directory each under the serving base path, TF Serving's layout
# <base_path>/<model>/<version>/saved_model.pb.
RETRIEVAL_MODEL = "retrieval"
RETRIEVAL_BRUTE_FORCE_MODEL = "retrieval_brute_force"
RANKING_MODEL = "ranking"
# The one-call models (trainer/recommender/export.py): retrieval -> filters -> ranking ->
# top k in one Predict. RECOMMENDER_MODEL wraps the ScaNN retrieval export (needs the Scann
# ops); RECOMMENDER_BRUTE_FORCE_MODEL wraps the brute-force one: stock ops, stock TF Serving.
RECOMMENDER_MODEL = "recommender"
RECOMMENDER_BRUTE_FORCE_MODEL = "recommender_brute_force"
ALL_MODELS = (RETRIEVAL_MODEL, RETRIEVAL_BRUTE_FORCE_MODEL, RANKING_MODEL, RECOMMENDER_MODEL,
              RECOMMENDER_BRUTE_FORCE_MODEL)
# The one-call model that wraps each retrieval model.
RECOMMENDER_OF = {RETRIEVAL_MODEL: RECOMMENDER_MODEL, RETRIEVAL_BRUTE_FORCE_MODEL: RECOMMENDER_BRUTE_FORCE_MODEL}

# Signatures.
RECOMMEND_SIGNATURE = "recommend"  # retrieval: query features -> top-k item ids + scores
QUERY_EMBEDDING_SIGNATURE = "query_embedding"  # retrieval: query features -> [B, D]
CANDIDATE_EMBEDDING_SIGNATURE = "candidate_embedding"  # retrieval: item ids -> [B, D]
SCORE_SIGNATURE = "score"  # ranking: query features + candidates -> score per head
EXPLAIN_SIGNATURE = "explain"  # ranking: score's inputs -> its scores + per-feature-group attributions
POPULAR_SIGNATURE = "popular"  # retrieval: k [B] -> the most popular items in training
ITEM_FEATURES_SIGNATURE = "item_features"  # retrieval: item ids -> their side features as strings
DEFAULT_SIGNATURE = "serving_default"  # alias of recommend / score
EVAL_SIGNATURE = "evaluate_examples"  # ranking: serialized raw tf.Examples -> per-head scores (TFMA)
EXAMPLES_INPUT = "examples"  # string [B]: evaluate_examples input

# Input tensors of recommend / query_embedding / score. Every input is batch-major
# (first dimension B) so that server-side batching can concatenate requests, as TF
# Serving's batching requires. "Optional" inputs must still be sent; their neutral
# value (below) means "unknown": the model then uses what it stored at export time
# (the user's last known history and features) or an out-of-vocabulary embedding.
USER_ID = F.USER_ID  # string [B]
HISTORY_ITEM_IDS = F.HISTORY_ITEM_IDS  # string [B, H], padded with ""; all "" = unknown
HOUR_OF_DAY = F.HOUR_OF_DAY  # int64 [B]; -1 = unknown
DAY_OF_WEEK = F.DAY_OF_WEEK  # int64 [B]; -1 = unknown
HOURS_SINCE_PREV_EVENT = F.HOURS_SINCE_PREV_EVENT  # float32 [B]; -1 = unknown
# User side features (user_<name>, per dataset) are inputs too: string [B] ("" =
# unknown) or float32 [B] (NaN = unknown); GetModelMetadata lists them.
K = "k"  # int32 [B]: items wanted per row; outputs have max(k) columns, padded
EXCLUDE_HISTORY = "exclude_history"  # bool [B]: drop the row's history items
CANDIDATE_ITEM_IDS = "candidate_item_ids"  # string [B, C]: ranking candidates
ITEM_IDS_INPUT = F.ITEM_ID  # string [B]: candidate_embedding input

# Inputs of the one-call recommender's recommend signature, besides the query inputs,
# K and EXCLUDE_HISTORY (every one batch-major and always sent; the neutral value in brackets):
NUM_CANDIDATES = "num_candidates"  # int32 [B]: stage-1 size (0: the model's default); at least k
EXCLUDE_ITEM_IDS = "exclude_item_ids"  # string [B, E]: never return these ("" padding)
RANK_BY = "rank_by"  # string [B]: "engagement" ("" too), "rating" or "blend"
RANK_BY_VALUES = ("engagement", "rating", "blend")
DIVERSITY = "diversity"  # float32 [B] in 0..1: MMR weight of dissimilarity (0: ranking order)
FILTER_PREFIX = "filter_"  # filter_<item feature key>: string [B, V]; keep items holding one value


def filter_input(item_feature_key: str) -> str:
    """The recommender input that filters on an item feature: filter_item_genres."""
    return FILTER_PREFIX + item_feature_key


# The "unknown" value of each optional input above, for clients, warmup requests and the
# benchmarks (one table, so they cannot drift). USER_ID, K and CANDIDATE_ITEM_IDS have none.
_NEUTRAL = {HISTORY_ITEM_IDS: "", HOUR_OF_DAY: -1, DAY_OF_WEEK: -1, HOURS_SINCE_PREV_EVENT: -1.0,
            EXCLUDE_HISTORY: False, NUM_CANDIDATES: 0, EXCLUDE_ITEM_IDS: "", RANK_BY: "", DIVERSITY: 0.0}


def neutral_value(key: str, is_float: bool = False):
    """The value of input ``key`` that means "unknown" / "the model's default".

    User side features: "" (string) or NaN (``is_float``); filter_<feature>: "" (no filter).
    Raises KeyError for an input that has none (user id, k, ranking candidates).
    """
    if key in _NEUTRAL:
        return _NEUTRAL[key]
    if key.startswith(FILTER_PREFIX):
        return ""
    if key.startswith(F.USER_FEATURE_PREFIX) and key != USER_ID:
        return float("nan") if is_float else ""
    raise KeyError(f"input {key!r} has no neutral value: it must be sent")


# Output tensors.
OUT_ITEM_IDS = "item_ids"  # string [B, max(k)]; "" past a row's own k
OUT_SCORES = "scores"  # float32 [B, max(k)]; -inf past a row's own k
OUT_KNOWN_USER = "known_user"  # bool [B]: the user id was in the training vocabulary
OUT_EMBEDDING = "embedding"  # float32 [B, D]
# item_features outputs: one string [B] tensor per item side feature, named by its
# canonical key (item_<name>); multi-valued ones joined with MULTI_VALUE_JOIN;
# plus OUT_KNOWN_ITEM.
OUT_KNOWN_ITEM = "known_item"  # bool [B]: the item id is in the served catalogue
MULTI_VALUE_JOIN = "|"
OUT_RATING = "rating"  # float32 [B, C]: predicted rating
OUT_ENGAGEMENT = "engagement"  # float32 [B, C]: probability of engagement
# The ranking model's explain signature: OUT_RATING, OUT_ENGAGEMENT and these. Gradient x input per
# (query, candidate) pair, summed over each feature group's encoded columns (trainer/ranking/model.py
# RankingModel.explain_encoded): a first-order attribution of the head, not an exact decomposition.
OUT_ENGAGEMENT_ATTRIBUTIONS = "engagement_attributions"  # float32 [B, C, G]: of the engagement logit
OUT_RATING_ATTRIBUTIONS = "rating_attributions"  # float32 [B, C, G]: of the predicted rating
OUT_FEATURE_GROUPS = "feature_groups"  # string [B, G]: the G group names (user_id, item_genres, history ...)
# One-call recommender outputs besides OUT_ITEM_IDS, OUT_SCORES (the final score the list is
# ordered by), OUT_RATING / OUT_ENGAGEMENT ([B, k]), OUT_KNOWN_USER and one string [B, k]
# per item side feature (item_<name>, as item_features answers); -inf / "" past a row's k.
OUT_RETRIEVAL_SCORES = "retrieval_scores"  # float32 [B, k]: stage-1 score (popularity count for the fallback)
OUT_SOURCE = "source"  # string [B]: SOURCE_RETRIEVAL, or SOURCE_POPULAR for an unknown user with no history
OUT_REASONS = "reasons"  # string [B, k]: why, for people
OUT_SIMILAR_ITEM_IDS = "similar_item_ids"  # string [B, k, R]: history items behind the reason, closest first
OUT_SIMILAR_SCORES = "similar_scores"  # float32 [B, k, R]: their cosines (-inf for "")
OUT_HISTORY_ITEM_IDS = "history_item_ids"  # string [B, H]: the history the model used (sent or stored)
SOURCE_RETRIEVAL = "retrieval"
SOURCE_POPULAR = "popular"
REASON_POPULAR = "popular with all users"
REASON_PROFILE = "matches your profile"

# Warmup file, TF Serving's convention.
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
