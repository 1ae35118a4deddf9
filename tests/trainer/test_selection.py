"""Model selection: the validation split is carved off train with the eval split's rule,
and early stopping / the selected epoch look at it, never at the eval split."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import features as F
from trainer.hparams import SelectionConfig, trainer_config
from trainer.skeleton import SplitData, carve_validation
from trainer.splits import SplitConfig


def _train(users, times):
    raw = {F.USER_ID: np.array(users, dtype=object), F.ITEM_ID: np.array([f"i{n}" for n in range(len(users))], object),
           F.TIMESTAMP: np.array(times, dtype=np.int64)}
    rows = tf.data.Dataset.from_tensor_slices({"row": tf.range(len(users))})
    return SplitData(rows=rows, raw=raw)


def _row_ids(split: SplitData) -> list[int]:
    return [int(r["row"]) for r in split.rows]


def test_global_time_validation_is_the_time_tail_of_train():
    train = _train(["a", "b", "a", "b", "c", "a", "b", "c", "a", "c"], [5, 1, 9, 3, 7, 2, 8, 4, 6, 10])
    fit, val = carve_validation(train, SplitConfig("global_time", 0.2), SelectionConfig())
    assert sorted(val.raw[F.TIMESTAMP].tolist()) == [9, 10]  # the latest 20% of train
    assert _row_ids(val) == [2, 9] and _row_ids(fit) == [0, 1, 3, 4, 5, 6, 7, 8]
    assert max(fit.raw[F.TIMESTAMP]) < min(val.raw[F.TIMESTAMP])
    # rows and raw columns stay aligned
    assert val.raw[F.ITEM_ID].tolist() == ["i2", "i9"]


def test_per_user_validation_is_each_users_latest_events():
    users = ["a"] * 5 + ["b"] * 5 + ["c"] * 2  # c has fewer than min_user_events: all fit
    times = [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 7, 8]
    fit, val = carve_validation(_train(users, times), SplitConfig("per_user", 0.2, 5), SelectionConfig())
    assert list(zip(val.raw[F.USER_ID], val.raw[F.TIMESTAMP])) == [("a", 5), ("b", 50)]
    assert len(_row_ids(fit)) == 10 and "c" in set(fit.raw[F.USER_ID])


def test_validation_fraction_and_switch():
    train = _train(list("abcdefghij"), list(range(10)))
    _, val = carve_validation(train, SplitConfig("global_time", 0.2), SelectionConfig(validation_fraction=0.5))
    assert val.raw[F.TIMESTAMP].tolist() == [5, 6, 7, 8, 9]
    assert carve_validation(train, SplitConfig(), SelectionConfig(validation=False)) == (None, None)
    assert carve_validation(_train(["a"], [1]), SplitConfig("per_user", 0.2, 5), SelectionConfig()) == (None, None)


def test_selection_config_is_strict():
    assert trainer_config({}).selection == SelectionConfig()
    assert trainer_config({"selection": {"retrieval_metric": "ndcg@10"}}).selection.retrieval_metric == "ndcg@10"
    with pytest.raises(ValueError, match="retrieval_metric must be one of"):
        trainer_config({"selection": {"retrieval_metric": "auc"}})
    with pytest.raises(ValueError, match="validation_fraction"):
        trainer_config({"selection": {"validation_fraction": 1.5}})


def test_leave_last_one_holds_out_each_users_last_event_and_validates_on_the_one_before():
    import pandas as pd

    from trainer.splits import assign_splits

    users = ["a"] * 6 + ["b"] * 6 + ["c"] * 3  # c: fewer than min_user_events, all train
    times = [6, 1, 5, 2, 4, 3, 10, 60, 20, 50, 30, 40, 7, 9, 8]
    labels = assign_splits(pd.DataFrame({"user_id": users, "timestamp": times}), "leave_last_one", 0.0, 5)
    held = [(u, t) for u, t, s in zip(users, times, labels) if s == "eval"]
    assert held == [("a", 6), ("b", 60)]
    train_idx = [i for i, s in enumerate(labels) if s == "train"]
    fit, val = carve_validation(_train([users[i] for i in train_idx], [times[i] for i in train_idx]),
                                SplitConfig("leave_last_one", 0.2, 5), SelectionConfig())
    assert sorted(zip(val.raw[F.USER_ID], val.raw[F.TIMESTAMP])) == [("a", 5), ("b", 50)]
    assert len(_row_ids(fit)) == len(train_idx) - 2


def test_no_eval_row_reaches_early_stopping_or_the_tuner(tiny_pipeline):
    """On ids: what the Tuner's trials and the trainers' early stopping see (the validation
    rows, the val_loss batches, the validation recall task) is train data, never eval."""
    from collections import Counter

    import tensorflow_transform as tft

    from trainer import raw_data
    from trainer.retrieval.train import RECIPE, ValidationRetrieval
    from trainer.tuning import Trials

    examples, transform, side, hist = tiny_pipeline
    config = trainer_config({"retrieval": {"batch_size": 64}})
    trials = Trials("retrieval", examples, transform, side, hist, config, epochs=1,
                    split=SplitConfig("global_time", 0.2))
    data = trials.data
    spec = {k: tf.io.FixedLenFeature([1], t) for k, t in
            ((F.USER_ID, tf.string), (F.ITEM_ID, tf.string), (F.TIMESTAMP, tf.int64))}

    def triples(split):
        d = raw_data.read_numpy(raw_data.split_files(examples, split), spec)
        return Counter(zip(*(np.ravel(d[k]).tolist() for k in (F.USER_ID, F.ITEM_ID, F.TIMESTAMP))))

    def as_bytes(v):
        return v if isinstance(v, bytes) else str(v).encode()

    train, evals = triples("train"), triples("eval")
    val = Counter(zip(map(as_bytes, data.validation.raw[F.USER_ID]), map(as_bytes, data.validation.raw[F.ITEM_ID]),
                      data.validation.raw[F.TIMESTAMP].tolist()))
    assert val and not (set(val) & set(evals))
    assert all(train[t] >= n for t, n in val.items())  # every validation row is a train row
    assert sum(val.values()) + len(data.fit.raw[F.USER_ID]) == sum(train.values())

    # The batches Keras computes val_loss on (early stopping, restore) are those rows, by id.
    out = tft.TFTransformOutput(transform)
    user_idx = {u: i + 1 for i, u in enumerate(out.vocabulary_by_name(F.USER_VOCAB))}
    item_idx = {u: i + 1 for i, u in enumerate(out.vocabulary_by_name(F.ITEM_VOCAB))}
    prepared = RECIPE.datasets(data, config.retrieval, data.fit, data.validation)
    seen = Counter()
    for batch in prepared.eval_ds:
        seen.update(zip(batch[F.USER_ID_IDX].numpy().tolist(), batch[F.ITEM_ID_IDX].numpy().tolist()))
    assert seen == Counter((user_idx[u], item_idx[i]) for (u, i, _), n in val.items() for _ in range(n))

    # The validation recall task: its users and truth come from the validation rows.
    callback = ValidationRetrieval(data, RECIPE.build(data, config.retrieval, prepared), "recall@100")
    truth = callback.task.truth.tocoo()
    pairs = {(callback.task.user_ids[r].encode(), callback.task.item_ids[c].encode())
             for r, c in zip(truth.row, truth.col)}
    assert pairs and pairs <= {(u, i) for u, i, _ in val}
    eval_only = {(u, i) for u, i, _ in evals} - {(u, i) for u, i, _ in train}
    assert not (pairs & eval_only)


def test_epochs_derived_from_the_data_only_when_not_given():
    from trainer.skeleton import AUTO_MAX_EPOCHS, AUTO_MIN_EPOCHS, epochs_for_steps

    assert epochs_for_steps(5, 1200, 100, 512) == 5  # given: used as is, even on tiny data
    assert epochs_for_steps(0, 1200, 80_000, 512) == AUTO_MIN_EPOCHS  # 156 steps an epoch: 8 is enough
    assert epochs_for_steps(0, 1200, 30_200, 512) == 21  # 58 steps an epoch
    assert epochs_for_steps(0, 1200, 100, 512) == AUTO_MAX_EPOCHS  # one step an epoch: capped
    assert epochs_for_steps(0, 0, 100, 512) == AUTO_MIN_EPOCHS
    with pytest.raises(ValueError, match="epochs"):
        trainer_config({"retrieval": {"epochs": -1}})


def test_validation_recall_on_a_seeded_sample_of_users(tiny_pipeline):
    from trainer import skeleton
    from trainer.retrieval.train import RECIPE, ValidationRetrieval

    examples, transform, side, hist = tiny_pipeline
    config = trainer_config({"retrieval": {"batch_size": 64}})
    data = skeleton.load_data(examples, transform, side, hist, RECIPE.raw_keys(side), 0,
                              SplitConfig("global_time", 0.2), config.selection)
    prepared = RECIPE.datasets(data, config.retrieval, data.fit, data.validation)
    model = RECIPE.build(data, config.retrieval, prepared)
    full = ValidationRetrieval(data, model, "recall@100")
    a, b = (ValidationRetrieval(data, model, "recall@100", max_users=5, seed=3) for _ in range(2))
    assert full.task.num_users > 5 and a.task.num_users == 5
    assert list(a.task.user_ids) == list(b.task.user_ids) and set(a.task.user_ids) <= set(full.task.user_ids)
    # The sampled users' queries are theirs: the same rows as in the full task.
    logs = {}
    a.on_epoch_end(0, logs)
    assert 0.0 <= logs["val_recall@100"] <= 1.0
    with pytest.raises(ValueError, match="max_validation_users"):
        trainer_config({"selection": {"max_validation_users": -1}})
