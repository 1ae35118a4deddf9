"""The sequence objective of the retrieval model: every event of a user's sequence is a target.

``trainer.retrieval.objective: sequence`` trains the same two towers (so the export,
the index and the serving signatures do not change) on each user's train events in
time order instead of on one example row per event:

- a user's events e_0 .. e_{n-1} give the targets e_1 .. e_{n-1}; each target's query is
  the prefix before it, encoded by the history encoder's per-prefix form
  (``HistoryEncoder.call_sequence``: causal SASRec, GRU or cumulative mean) plus the
  user's features and the target event's context (hour, weekday, recency);
- windows of ``history_length`` items (the history the model serves with) are cut from
  the latest event backwards, ``sequence_stride`` apart; each keeps its last
  ``sequence_stride`` positions as targets (so a target sees at least ``history_length -
  sequence_stride`` items of history, as a served query sees ``history_length``) and
  is left-padded, so its last position is encoded exactly as a served history of the same
  items;
- the loss is the softmax over the whole catalogue (SASRec with full cross-entropy,
  Klenitskiy & Vasilev 2023; no sampling bias, so no logQ correction) while the
  catalogue has at most ``full_softmax_max_items`` items; past that, the other targets of
  the batch are the negatives (in-batch softmax, logQ-corrected, accidental hits removed,
  as the per-event objective).

One pass over the sequence of a user computes every target's query at once, where the
per-event objective re-encodes the whole history for every event: the cost of an epoch
is that of one forward pass per window rather than per event.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import features as F
from trainer.distribute import policy_scope
from trainer.model_inputs import FeatureLayout, UNKNOWN_CONTEXT
from trainer.retrieval.towers import Tower

TARGETS = "sequence_targets"  # [S, L] item index of each position's next event (0 = no target)
CONTEXT_KEYS = tuple(UNKNOWN_CONTEXT)  # hour, weekday, recency: per target event


def user_keys(layout: FeatureLayout) -> list[str]:
    """The model inputs that are the same on every event of a user (id and side features)."""
    keys = [F.USER_ID_IDX, *layout.user_cats]
    for k in layout.user_nums:
        keys += [k + F.BUCKET_SUFFIX, k + F.Z_SUFFIX]
    return keys


def event_columns(rows: tf.data.Dataset, keys) -> dict[str, np.ndarray]:
    """The scalar model inputs ``keys`` of unbatched rows, as numpy [N] columns (file order)."""
    keys = list(keys)
    parts: dict[str, list] = {k: [] for k in keys}
    for batch in rows.map(lambda row: {k: row[k] for k in keys}).batch(65536):
        for k in keys:
            parts[k].append(batch[k].numpy())
    return {k: np.concatenate(v) if v else np.zeros([0]) for k, v in parts.items()}


def time_order(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Event order by user, then time, ties in file order: how every sequence here is read."""
    return np.lexsort((np.arange(len(users)), timestamps, users))


def build_sequences(columns: dict[str, np.ndarray], users: np.ndarray, timestamps: np.ndarray,
                    window: int, per_user_keys, stride: int = 0) -> dict[str, np.ndarray]:
    """Windows of each user's events in time order (ties in file order).

    ``columns``: per-event model inputs (item index, context, user features) [N];
    ``users``/``timestamps``: the raw user id and timestamp of each event [N].

    A user's events e_0 .. e_{n-1} give the targets e_1 .. e_{n-1}. Window w (w = 0 the
    latest) ends at target e_{n-1-w*stride} and holds the ``window`` items before each of its
    positions' targets; it keeps as targets only its last ``stride`` positions (``stride``
    0 = ``window``: windows side by side), so with a stride below the window every target
    but a user's first few sees at least ``window - stride`` items of history, closer to a
    served history of ``window`` items. A user with n events gives ceil((n - 1) / stride)
    windows, the latest first in the user's block.

    Returns ``history_item_ids_idx`` [S, window] (the items, left-padded with 0),
    ``TARGETS`` [S, window] (the item after each position, 0 = not a target), the target
    events' context [S, window] ("unknown" where no target) and the user features [S].
    """
    stride = min(stride or window, window)
    n = len(users)
    order = time_order(users, timestamps)
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1] if n else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, n]).astype(np.int64)
    windows = -(-(counts - 1) // stride)  # users with one event have no target
    user = np.repeat(np.arange(len(starts)), windows)  # the user of each window
    w = np.arange(len(user)) - np.repeat(np.r_[0, np.cumsum(windows)[:-1]], windows)
    end = counts[user] - 1 - w * stride  # rank of the window's latest target
    rank = end[:, None] - (window - 1 - np.arange(window))[None, :]  # target rank of each position
    has_input = rank >= 1
    is_target = has_input & (end[:, None] - rank < stride)
    first = starts[user][:, None]
    items = columns[F.ITEM_ID_IDX][order]
    out = {F.HISTORY_IDX: np.where(has_input, items[np.where(has_input, first + rank - 1, 0)], 0).astype(np.int64),
           TARGETS: np.where(is_target, items[np.where(is_target, first + rank, 0)], 0).astype(np.int64)}
    for key in CONTEXT_KEYS:
        if key in columns:
            values = columns[key][order]
            picked = values[np.where(is_target, first + rank, 0)]
            out[key] = np.where(is_target, picked, UNKNOWN_CONTEXT[key]).astype(values.dtype)
    for key in per_user_keys:
        out[key] = columns[key][order][starts[user]] if len(user) else np.zeros(0, columns[key].dtype)
    return out


def latest_items(users: np.ndarray, timestamps: np.ndarray, items: np.ndarray, wanted, n: int, pad) -> np.ndarray:
    """[len(wanted), n]: each wanted user's last ``n`` events' ``items`` in time order (ties in
    file order, as ``build_sequences`` orders them), oldest first, right-padded with ``pad``
    as a served history is; a user without events gets an all-``pad`` row.

    The query history of a model whose history is longer than the per-event rows carry
    (``examples.sequence_length``): built from the split's events instead of the rows.
    """
    order = time_order(users, timestamps)
    u = users[order]
    ends = np.r_[np.flatnonzero(u[1:] != u[:-1]) + 1, len(u)] if len(u) else np.zeros(0, np.int64)
    starts = np.r_[0, ends[:-1]] if len(u) else ends
    span = {u[e - 1]: (s, e) for s, e in zip(starts, ends)}
    sorted_items = items[order]
    out = np.full((len(wanted), n), pad, dtype=items.dtype)
    for row, user in enumerate(wanted):
        if user in span:
            s, e = span[user]
            picked = sorted_items[max(s, e - n):e]
            out[row, :len(picked)] = picked
    return out


def sequence_dataset(sequences: dict, batch_size: int, shuffle: bool, seed: int, map_fn=None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(sequences)
    if shuffle:
        ds = ds.shuffle(len(sequences[TARGETS]), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=shuffle)
    if map_fn is not None:
        ds = ds.map(map_fn)
    return ds.prefetch(2)


def catalogue_rows(catalogue: dict, num_items: int) -> np.ndarray:
    """[num_items]: each item index's row in ``catalogue`` (candidate-tower inputs), -1 where
    the item is not a candidate."""
    ids = np.asarray(catalogue[F.ITEM_ID_IDX]).astype(np.int64)
    rows = np.full(num_items, -1, np.int64)
    rows[ids] = np.arange(len(ids))
    return rows


def catalogue_softmax_loss(query, rows, candidate_tower, catalogue: dict, temperature: float, training: bool):
    """Mean softmax cross-entropy of each query's target catalogue row over every catalogue item
    (the candidate tower run over the whole catalogue); called under the float32 policy."""
    candidates = candidate_tower(catalogue, training=training)  # [C, D]
    logits = tf.matmul(query, candidates, transpose_b=True) / temperature
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=rows, logits=logits))


def full_softmax(catalogue_size: int, hp) -> bool:
    """Whether the loss covers the whole catalogue (else the batch's targets are the negatives)."""
    return catalogue_size <= hp.full_softmax_max_items


class SequenceRetrievalModel(tfrs.Model):
    """The two towers trained on the sequence objective (module docstring)."""

    def __init__(self, query_tower: Tower, candidate_tower: Tower, hp, catalogue: dict, item_probabilities):
        """``catalogue``: every catalogue item's candidate-tower inputs (candidates split order);
        ``item_probabilities`` [num_items]: p(item) by item index, for the in-batch fallback."""
        super().__init__()
        self.query_tower, self.candidate_tower, self.hp = query_tower, candidate_tower, hp
        self.catalogue = catalogue
        self.catalogue_size = len(catalogue[F.ITEM_ID_IDX])
        self.item_rows = tf.constant(catalogue_rows(catalogue, len(item_probabilities)))  # -1: not a candidate
        self.item_probabilities = tf.constant(item_probabilities, tf.float32)
        self.full_softmax = full_softmax(self.catalogue_size, hp)
        self.task = tfrs.tasks.Retrieval(temperature=hp.temperature, remove_accidental_hits=hp.remove_accidental_hits)

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        query = self.query_tower.call_sequence(inputs, training=training)  # [B, L, D]
        targets = inputs[TARGETS]
        rows = tf.gather(self.item_rows, targets)
        keep = tf.logical_and(targets > 0, rows >= 0)
        query, rows, targets = tf.boolean_mask(query, keep), tf.boolean_mask(rows, keep), tf.boolean_mask(targets, keep)
        with policy_scope("float32"):
            if self.full_softmax:
                return catalogue_softmax_loss(query, rows, self.candidate_tower, self.catalogue, self.hp.temperature,
                                              training)
            picked = {k: tf.gather(v, rows) for k, v in self.catalogue.items()}
            candidates = self.candidate_tower(picked, training=training)
            probability = tf.gather(self.item_probabilities, targets)
            return self.task(query, candidates,
                             candidate_sampling_probability=probability if self.hp.logq_correction else None,
                             candidate_ids=targets if self.hp.remove_accidental_hits else None,
                             compute_metrics=False)

