"""Raw feature names: the one place they are defined (the bottom of the import graph).

What the example builder writes into each tf.Example and what a client sends a
served model: imported by tfx_pipeline/ (tables, example building, schema checks),
trainer/ (Transform, models, exports) and serving/ (the tensor names, the client).
Plain Python, no TensorFlow import, so light clients can use it. The names of the
transformed (model input) features live in trainer/features.py.

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


def user_feature(name: str) -> str:
    """Canonical example key for a user-table column."""
    return USER_FEATURE_PREFIX + name


def item_feature(name: str) -> str:
    """Canonical example key for an item-table column."""
    return ITEM_FEATURE_PREFIX + name
