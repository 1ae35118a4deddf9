"""Warm start across vocabulary growth: known ids keep their rows, new ids get fresh ones."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from trainer import features as F
from trainer.hparams import trainer_config
from trainer.warm_start import (INDEX_FILE, STATE_DIR, VARIABLES_FILE, VOCAB_DIR, _remap_rows, state_dir_of,
                                vocabulary_of)


def test_vocabulary_of_names_the_vocab_each_embedding_follows():
    assert vocabulary_of("query_tower/query_encoder/emb_user_id/embeddings:0") == F.USER_VOCAB
    assert vocabulary_of("emb_item_id/embeddings:0") == F.ITEM_VOCAB
    assert vocabulary_of("candidate_tower/item_encoder/emb_item_genres_idx/embeddings:0") == "item_genres"
    assert vocabulary_of("x/emb_item_title_tokens/embeddings:0") == "item_title"
    assert vocabulary_of("x/emb_hour/embeddings:0") is None
    assert vocabulary_of("x/emb_user_age_bucket/embeddings:0") is None
    assert vocabulary_of("query_tower_mlp/dense/kernel:0") is None


def test_remap_rows_moves_known_tokens_and_keeps_new_rows_fresh():
    # Layout: [padding, vocab..., 1 OOV row].
    old_vocab = [b"a", b"b", b"c"]
    old = np.array([[0.0], [1.0], [2.0], [3.0], [9.0]])  # pad, a, b, c, oov
    new_vocab = [b"c", b"d", b"a"]  # reordered by frequency, d is new
    fresh = np.full((5, 1), -1.0)
    out, carried = _remap_rows(fresh, old, new_vocab, old_vocab, oov=1)
    assert carried == 2
    np.testing.assert_array_equal(out[:, 0], [0.0, 3.0, -1.0, 1.0, 9.0])


def test_state_dir_of_accepts_the_serving_dir_tfx_passes(tmp_path):
    assert state_dir_of(None) is None
    assert state_dir_of(str(tmp_path / "Format-Serving")) is None
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / INDEX_FILE).write_text("{}")
    assert state_dir_of(str(tmp_path / "Format-Serving")) == str(tmp_path / STATE_DIR)


@pytest.fixture(scope="module")
def two_spans(tmp_path_factory):
    """Span 1: the tiny dataset; span 2: the same ids plus new users and items, retrained warm."""
    from tests.support.tiny_pipeline import build_tiny_pipeline, config, run_transform, tables
    from tfx_pipeline.data.example_builder import build_examples
    from trainer.retrieval.train import train_and_export

    root = tmp_path_factory.mktemp("warm")
    first = build_tiny_pipeline(str(root / "span1"))
    hp = {"retrieval": {"epochs": 1, "batch_size": 64}}
    m1 = train_and_export(first.examples_uri, first.transform_dir, str(root / "m1" / "Format-Serving"),
                          str(root / "r1"), first.side_features, first.history_length, trainer_config(hp))
    events, users, items = tables(num_users=50, num_items=36, num_events=1200, seed=1)
    cfg = config()
    ex2, tr2 = str(root / "span2" / "examples"), str(root / "span2" / "transform_graph")
    build_examples(events, users, items, cfg, ex2)
    run_transform(ex2, tr2, cfg.side_features(), str(root / "span2" / "tmp"))
    return root, first, m1, ex2, tr2, cfg


def test_state_is_saved_beside_the_model(two_spans):
    root, first, m1, *_ = two_spans
    state = root / "m1" / STATE_DIR
    index = json.loads((state / INDEX_FILE).read_text())
    assert (state / VARIABLES_FILE).exists() and F.ITEM_VOCAB in index["vocabularies"]
    assert (state / VOCAB_DIR / F.USER_VOCAB).exists()
    assert m1["warm_start"] == {"taken": False, "reason": "no blessed base model"}


def test_known_ids_keep_their_learned_rows_after_vocabulary_growth(two_spans):
    from tensorflow_transform import TFTransformOutput

    from trainer import raw_data
    from trainer.model_inputs import layout_from_transform
    from trainer.retrieval.model import RetrievalModel
    from trainer.retrieval.towers import build_towers
    from trainer.warm_start import warm_start

    root, first, m1, ex2, tr2, cfg = two_spans
    # The base model's id size, as a warm-started run keeps it (trainer/data_defaults.py).
    hp = trainer_config({"retrieval": {"batch_size": 64, "id_embedding_dim": m1["id_embedding_dim"]}}).retrieval
    tft_out = TFTransformOutput(tr2)
    layout = layout_from_transform(tft_out, cfg.side_features())
    rows = raw_data.transformed_rows(raw_data.split_files(ex2, "train"), tft_out.raw_feature_spec(),
                                     tft_out.transform_features_layer(), layout)
    from trainer.retrieval.model import add_sampling_probability

    batch = next(iter(raw_data.batched(rows, 64, False, 0, add_sampling_probability(tf.ones([layout.num_items])))))
    query, cand = build_towers(layout, hp, cfg.examples.history_length)
    model = RetrievalModel(query, cand, hp)
    model.compute_loss(batch)
    report = warm_start(model, str(root / "m1" / STATE_DIR), tr2)

    item_key = next(k for k in report["remapped"] if vocabulary_of(k) == F.ITEM_VOCAB)
    assert report["remapped"][item_key]["rows_carried"] > 0 and report["remapped"][item_key]["new_rows"] > 0
    # The same item id's row, at its old and its new index.
    state = np.load(root / "m1" / STATE_DIR / VARIABLES_FILE)
    names = json.loads((root / "m1" / STATE_DIR / INDEX_FILE).read_text())["variables"]
    old_table = state[f"arr_{names.index(item_key)}"]
    old_vocab = (root / "m1" / STATE_DIR / VOCAB_DIR / F.ITEM_VOCAB).read_bytes().split(b"\n")
    new_vocab = open(tft_out.vocabulary_file_by_name(F.ITEM_VOCAB), "rb").read().split(b"\n")
    table = model.trainable_variables[int(item_key.split(":")[0])].numpy()
    token = next(t for t in new_vocab if t in old_vocab and t and new_vocab.index(t) != old_vocab.index(t))
    np.testing.assert_allclose(table[1 + new_vocab.index(token)], old_table[1 + old_vocab.index(token)])
    assert report["copied"] > 0 and not [s for s in report["skipped"] if "shape" in s]


def test_warm_trainer_run_records_it_and_cold_switch_forces_scratch(two_spans):
    from trainer.retrieval.train import train_and_export

    root, first, m1, ex2, tr2, cfg = two_spans
    base = str(root / "m1" / "Format-Serving")
    warm = train_and_export(ex2, tr2, str(root / "m2" / "Format-Serving"), str(root / "r2"), cfg.side_features(),
                            cfg.examples.history_length,
                            trainer_config({"retrieval": {"epochs": 3, "batch_size": 64}, "warm_start": {"epochs": 1}}),
                            base_model=base)
    assert warm["warm_start"]["taken"] and warm["epochs_run"] == 1
    # The id size is derived (id_embedding_dim 0) and the warm run keeps the base model's, so the
    # id tables carry over row by row instead of being left fresh.
    assert warm["id_embedding_dim"] == m1["id_embedding_dim"]
    assert {vocabulary_of(k) for k in warm["warm_start"]["remapped"]} >= {F.USER_VOCAB, F.ITEM_VOCAB}
    cold = train_and_export(ex2, tr2, str(root / "m3" / "Format-Serving"), str(root / "r3"), cfg.side_features(),
                            cfg.examples.history_length,
                            trainer_config({"retrieval": {"epochs": 1, "batch_size": 64}, "warm_start": {"enabled": False}}),
                            base_model=base)
    assert cold["warm_start"] == {"taken": False, "reason": "disabled in config"}
    assert os.path.exists(root / "m2" / STATE_DIR / INDEX_FILE)


def test_ranking_warm_start(two_spans, tmp_path):
    from trainer.ranking.train import train_and_export

    root, first, _, ex2, tr2, cfg = two_spans
    hp = {"ranking": {"epochs": 1, "batch_size": 128}}
    train_and_export(first.examples_uri, first.transform_dir, str(tmp_path / "a" / "Format-Serving"),
                     str(tmp_path / "ra"), first.side_features, first.history_length, trainer_config(hp))
    m = train_and_export(ex2, tr2, str(tmp_path / "b" / "Format-Serving"), str(tmp_path / "rb"), cfg.side_features(),
                         cfg.examples.history_length, trainer_config(hp), base_model=str(tmp_path / "a" / "Format-Serving"))
    assert m["warm_start"]["taken"] and m["warm_start"]["copied"] > 0
    assert any(vocabulary_of(k) == F.ITEM_VOCAB for k in m["warm_start"]["remapped"])
