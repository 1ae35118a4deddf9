"""Feature names: the one place they are defined.

Imported by the example builder, the schema checks, `preprocessing_fn`, the
models, the export signatures, the serving client and the tests. Plain Python,
no TensorFlow import, so light clients can use it.

Raw features (what the example builder writes into each tf.Example):

  user_id                 bytes   [1]     the user who acted
  item_id                 bytes   [1]     the item acted on (the label side of retrieval)
  history_item_ids        bytes   [0..N]  the user's N most recent earlier items, oldest
                                          first, strictly before this event's timestamp
  timestamp               int64   [1]     event time, unix seconds (not a model input)
  hour_of_day             int64   [1]     0..23, UTC
  day_of_week             int64   [1]     0 (Monday) .. 6
  hours_since_prev_event  float   [1]     recency: hours since the user's previous event
                                          (0 when there is none)
  user_<name>             per the dataset config: categorical bytes or numeric float
  item_<name>             per the dataset config: categorical bytes, numeric float,
                          text bytes, or multi-valued bytes list
  rating                  float   [1]     label: explicit rating, or the event weight
  engaged                 int64   [1]     label: 1 if rating >= the engagement threshold
"""

USER_ID = "user_id"
ITEM_ID = "item_id"
HISTORY_ITEM_IDS = "history_item_ids"
TIMESTAMP = "timestamp"
HOUR_OF_DAY = "hour_of_day"
DAY_OF_WEEK = "day_of_week"
HOURS_SINCE_PREV_EVENT = "hours_since_prev_event"

RATING_LABEL = "rating"
ENGAGED_LABEL = "engaged"
LABEL_KEYS = (RATING_LABEL, ENGAGED_LABEL)

USER_FEATURE_PREFIX = "user_"
ITEM_FEATURE_PREFIX = "item_"

CONTEXT_FEATURES = (HOUR_OF_DAY, DAY_OF_WEEK, HOURS_SINCE_PREV_EVENT)
HOURS_IN_DAY = 24
DAYS_IN_WEEK = 7

# Feature kinds a dataset config may declare for user and item side tables.
CATEGORICAL = "categorical"
NUMERIC = "numeric"
TEXT = "text"
MULTI_VALUED = "multi_valued"
FEATURE_KINDS = (CATEGORICAL, NUMERIC, TEXT, MULTI_VALUED)

# Suffixes of the transformed (model input) features produced by preprocessing_fn.
IDX_SUFFIX = "_idx"  # vocabulary index (OOV buckets at the end)
Z_SUFFIX = "_z"  # z-score normalized numeric
BUCKET_SUFFIX = "_bucket"  # quantile bucket of a numeric
TOKENS_SUFFIX = "_tokens"  # vocabulary indices of lower-cased word tokens

# Vocabulary names (tft.vocabulary files) shared by several features.
ITEM_VOCAB = "item_id_vocab"
USER_VOCAB = "user_id_vocab"

# Transformed names of the core features.
USER_ID_IDX = USER_ID + IDX_SUFFIX
ITEM_ID_IDX = ITEM_ID + IDX_SUFFIX
HISTORY_IDX = HISTORY_ITEM_IDS + IDX_SUFFIX
RECENCY_Z = HOURS_SINCE_PREV_EVENT + Z_SUFFIX

OOV_BUCKETS = 1
# The examples split of logged exposures without engagement (tfx_pipeline/example_builder.py).
EXPOSURES_SPLIT = "exposures"
# Ranking training rows only: weight of the rating loss (0 for logged exposures, which have no rating).
RATING_WEIGHT = "rating_weight"
NUM_NUMERIC_BUCKETS = 10


def user_feature(name: str) -> str:
    """Canonical example key for a user-table column."""
    return USER_FEATURE_PREFIX + name


def item_feature(name: str) -> str:
    """Canonical example key for an item-table column."""
    return ITEM_FEATURE_PREFIX + name


def transformed_names(key: str, kind: str) -> tuple[str, ...]:
    """Names preprocessing_fn produces for a side feature of the given kind."""
    if kind == CATEGORICAL:
        return (key + IDX_SUFFIX,)
    if kind == NUMERIC:
        return (key + Z_SUFFIX, key + BUCKET_SUFFIX)
    if kind in (TEXT,):
        return (key + TOKENS_SUFFIX,)
    if kind == MULTI_VALUED:
        return (key + IDX_SUFFIX,)
    raise ValueError(f"unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")
