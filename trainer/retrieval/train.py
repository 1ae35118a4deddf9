"""TFX Trainer ``run_fn`` for the two-tower retrieval model.

custom_config: {"side_features": {key: kind}, "history_length": N,
                "trainer": {...trainer section of the dataset config...}}

Writes to the Model artifact the brute-force retrieval SavedModel (with warmup
requests) and, to the ModelRun artifact, what the gate, the index step and the
report read: ``metrics.json`` (Recall/NDCG@K of the model and of the popularity
baseline, user-level protocol of trainer/retrieval_metrics.py), ``history.json``
(per-epoch losses and gradient norms), ``eval_queries.npy`` (held-out query
embeddings) and TensorBoard logs.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from serving import names
from trainer import export, features as F, raw_data, retrieval_metrics
from trainer.hparams import parse_trainer_config
from trainer.retrieval.model import RetrievalModel, add_sampling_probability
from trainer.encoders import build_towers
from trainer.training_logs import log
from trainer.training_setup import fit_callbacks, prepare
from trainer.warm_start import maybe_warm_start, save_state

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
EVAL_QUERIES_FILE = "eval_queries.npy"
EVAL_QUERY_USERS_FILE = "eval_query_users.npy"
KS = (10, 50, 100)


def _item_strings(items: dict, item_features: dict) -> dict:
    out = {}
    for key, kind in item_features.items():
        col = items[key]
        if col.ndim == 2:  # multi-valued
            out[key] = np.array([names.MULTI_VALUE_JOIN.join(v.decode() for v in row if v) for row in col], dtype=object)
        elif kind == F.NUMERIC:
            out[key] = np.array([f"{v:g}" for v in col], dtype=object)
        else:
            out[key] = np.array([v.decode() for v in col], dtype=object)
    return out


def _as_str(a: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in a], dtype=object)


def train_and_export(examples_uri: str, transform_dir: str, serving_dir: str, run_dir: str, side_features: dict,
                     history_length: int, trainer_cfg: dict, log_dir: str | None = None,
                     base_model: str | None = None) -> dict:
    """The whole retrieval training; plain function so tests and benchmarks call it directly.

    ``base_model``: the latest blessed retrieval model (TFX's ``fn_args.base_model``) to
    warm-start from (trainer/warm_start.py); None trains from scratch.
    """
    cfg = parse_trainer_config(trainer_cfg)
    hp = cfg.retrieval
    ctx = prepare(examples_uri, transform_dir, side_features, hp.seed, hp.mixed_precision)
    tft_layer, layout, spec = ctx.tft_layer, ctx.layout, ctx.raw_spec
    user_features, item_features, replicas = ctx.user_features, ctx.item_features, ctx.replicas
    item_lists = [k for k, v in item_features.items() if v == F.MULTI_VALUED]
    batch_size = hp.batch_size * replicas
    train_files = raw_data.split_files(examples_uri, "train")

    counts = np.zeros(layout.num_items, dtype=np.int64)
    for ids in ctx.train_rows.map(lambda row: row[F.ITEM_ID_IDX]).batch(8192):
        np.add.at(counts, ids.numpy(), 1)
    sampling = add_sampling_probability(tf.constant(counts + 1))
    train_ds = raw_data.batched(ctx.train_rows, batch_size, True, hp.seed, sampling)
    eval_ds = raw_data.batched(ctx.eval_rows, batch_size, False, hp.seed, sampling)

    started = time.time()
    with ctx.strategy.scope():
        query_tower, candidate_tower = build_towers(layout, hp, history_length)
        model = RetrievalModel(query_tower, candidate_tower, hp)
        model.compile(optimizer=tf.keras.optimizers.Adam(hp.learning_rate))
        warm, epochs = maybe_warm_start(model, lambda: model.compute_loss(next(iter(train_ds))), base_model, transform_dir,
                                        cfg.warm_start, hp, "retrieval")
    callbacks, _, grad_logger = fit_callbacks(model, train_ds, hp.early_stopping_patience, log_dir)
    log(f"retrieval: training {epochs} epoch(s), batch {batch_size}, encoder {hp.history_encoder}, "
        f"{replicas} replica(s), {layout.num_items - 2} items, {layout.num_users - 2} users")
    fit = model.fit(train_ds, validation_data=eval_ds, epochs=epochs, callbacks=callbacks, verbose=2)
    train_seconds = time.time() - started

    # Candidates: every catalogue item through the Transform graph and the candidate tower.
    items = raw_data.read_numpy(raw_data.split_files(examples_uri, "items"), raw_data.subset_spec(spec, raw_data.item_keys(spec)))
    item_raw = {k: tf.constant(v) for k, v in items.items()}
    item_inputs = export.raw_to_model_inputs(item_raw, tft_layer, layout, list_keys=item_lists)
    cand_emb = candidate_tower(item_inputs, training=False).numpy()
    item_ids = _as_str(items[F.ITEM_ID])
    unknown_raw = {k: tf.constant(v[:1]) for k, v in items.items()}
    unknown_raw[F.ITEM_ID] = tf.constant([b"__unknown_item__"])
    for key, kind in item_features.items():
        if kind == F.NUMERIC:
            unknown_raw[key] = tf.constant([np.nan], tf.float32)
        elif kind == F.MULTI_VALUED:
            unknown_raw[key] = tf.constant([[b""]])
        else:
            unknown_raw[key] = tf.constant([b""])
    unknown_emb = candidate_tower(export.raw_to_model_inputs(unknown_raw, tft_layer, layout, list_keys=item_lists),
                                  training=False).numpy()[0]
    raw_counts = pd.Series(_as_str(raw_data.read_numpy(train_files, raw_data.subset_spec(spec, [F.ITEM_ID]))[F.ITEM_ID])).value_counts()
    candidates = {"ids": item_ids, "embeddings": cand_emb,
                  "counts": raw_counts.reindex(item_ids).fillna(0).to_numpy(np.float64),
                  "features": _item_strings(items, item_features)}

    users = raw_data.read_numpy(raw_data.split_files(examples_uri, "users"), raw_data.subset_spec(spec, raw_data.user_state_keys(spec)))
    resolver = export.QueryResolver(tft_layer, query_tower, layout, user_features, users, history_length)
    fetch_k = min(len(item_ids), hp.max_k + hp.exclusion_pad)
    module = export.RetrievalModule(resolver, export.brute_force_layer(cand_emb, item_ids, fetch_k), candidates,
                                    hp.max_k, fetch_k, sorted(item_features), unknown_emb)

    save_state(model, transform_dir, os.path.dirname(serving_dir.rstrip("/")))
    metrics, (eval_queries, eval_users) = evaluate(examples_uri, spec, resolver, cand_emb, item_ids, user_features, candidates["counts"])
    export.save(module, serving_dir, user_features)
    from trainer.warmup_requests import write_retrieval_warmup
    write_retrieval_warmup(serving_dir, users, user_features, item_ids)

    os.makedirs(run_dir, exist_ok=True)
    metrics["train_seconds"] = train_seconds
    metrics["epochs_run"] = len(fit.history["loss"])
    metrics["warm_start"] = warm
    # Beside the model too: the gate reads it from the Model artifact (and from the
    # latest blessed Model's artifact).
    for directory in (run_dir, os.path.dirname(serving_dir.rstrip("/"))):
        with open(os.path.join(directory, METRICS_FILE), "w") as fh:
            json.dump(metrics, fh, indent=2)
    with open(os.path.join(run_dir, HISTORY_FILE), "w") as fh:
        json.dump({**{k: [float(x) for x in v] for k, v in fit.history.items()},
                   "grad_norm": grad_logger.norms}, fh, indent=2)
    np.save(os.path.join(run_dir, EVAL_QUERIES_FILE), eval_queries)
    np.save(os.path.join(run_dir, EVAL_QUERY_USERS_FILE), np.asarray(eval_users, dtype=str))
    log(f"retrieval: {fmt_metrics(metrics)}")
    return metrics


def fmt_metrics(m: dict) -> str:
    return ", ".join(f"{k} {m['model'][k]:.4f} (popularity {m['popularity'][k]:.4f})"
                     for k in ("recall@10", "recall@100", "ndcg@10"))


def evaluate(examples_uri, spec, resolver, cand_emb, item_ids, user_features, counts):
    """User-level Recall/NDCG@K on the eval split, for the model and the popularity baseline.

    Each evaluated user is queried with the features of their first eval event (its
    history is the user's latest training items); the truth is every item they
    interacted with in eval and not in train; train items are excluded.
    """
    keys = [F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.HISTORY_ITEM_IDS, F.HOUR_OF_DAY, F.DAY_OF_WEEK,
            F.HOURS_SINCE_PREV_EVENT, *user_features]
    sub = raw_data.subset_spec(spec, keys)
    train = raw_data.read_numpy(raw_data.split_files(examples_uri, "train"), raw_data.subset_spec(sub, [F.USER_ID, F.ITEM_ID]))
    ev = raw_data.read_numpy(raw_data.split_files(examples_uri, "eval"), sub)
    frame = lambda d: pd.DataFrame({F.USER_ID: _as_str(d[F.USER_ID]), F.ITEM_ID: _as_str(d[F.ITEM_ID])})
    task = retrieval_metrics.build_eval_task(frame(train), frame(ev), item_ids)
    # The first eval event of every evaluated user.
    order = np.lexsort((ev[F.TIMESTAMP], _as_str(ev[F.USER_ID])))
    users_sorted = _as_str(ev[F.USER_ID])[order]
    first = order[np.r_[True, users_sorted[1:] != users_sorted[:-1]]]
    by_user = {u: i for u, i in zip(_as_str(ev[F.USER_ID])[first], first)}
    rows = np.array([by_user[u] for u in task.user_ids])
    query = {k: tf.constant(ev[k][rows]) for k in [F.USER_ID, F.HISTORY_ITEM_IDS, F.HOUR_OF_DAY, F.DAY_OF_WEEK,
                                                   F.HOURS_SINCE_PREV_EVENT, *user_features]}
    q = resolver.resolve(query, fallback=False)[0].numpy()
    model = retrieval_metrics.evaluate_scores(task, lambda r: q[r] @ cand_emb.T, ks=KS)
    pop_scores = np.asarray(counts, dtype=np.float64)
    popularity = retrieval_metrics.evaluate_scores(task, lambda r: np.broadcast_to(pop_scores, (len(r), len(pop_scores))), ks=KS)
    return {"model": model, "popularity": popularity, "num_eval_users": int(task.num_users)}, (q, task.user_ids)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    from trainer.tuning import apply_best_hyperparameters

    cc = fn_args.custom_config
    train_and_export(
        examples_uri=raw_data.examples_root(fn_args.train_files),
        transform_dir=fn_args.transform_output,
        serving_dir=fn_args.serving_model_dir,
        run_dir=fn_args.model_run_dir,
        side_features=cc["side_features"],
        history_length=cc["history_length"],
        # The Tuner's best values, when the pipeline has a Tuner (trainer/tuning.py).
        trainer_cfg=apply_best_hyperparameters(cc.get("trainer", {}), fn_args.hyperparameters, "retrieval"),
        log_dir=os.path.join(fn_args.model_run_dir, "tensorboard"),
        base_model=fn_args.base_model,
    )
