"""Transformed (model input) feature names, and the raw names re-exported.

The raw names (what each tf.Example holds) are defined in serving/features.py and
re-exported here, so trainer code reads every feature name from one alias
(``from trainer import features as F``). The names below are what
``preprocessing_fn`` (trainer/preprocessing.py) produces and the models consume.
"""

from serving.features import *  # noqa: F401,F403  (the raw names: one definition, in serving/)
from serving.features import HISTORY_ITEM_IDS, HOURS_SINCE_PREV_EVENT, ITEM_ID, USER_ID

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
# Ranking training rows only: weight of the rating loss (0 for logged exposures, which have no rating).
RATING_WEIGHT = "rating_weight"
NUM_NUMERIC_BUCKETS = 10
