"""TFX Trainer ``run_fn`` for the two-tower retrieval model: its recipe for trainer/skeleton.py.

custom_config: {"side_features": {key: kind}, "history_length": N,
                "trainer": {...trainer sections of the dataset config...}}

Writes to the Model artifact the brute-force retrieval SavedModel (with warmup
requests) and, to the ModelRun artifact, what the gate, the index step and the
report read: ``metrics.json`` (Recall/NDCG@K of the model and of the popularity
baseline, user-level protocol of trainer/retrieval/metrics.py), ``history.json``
(per-epoch losses and gradient norms), ``eval_queries.npy`` (held-out query
embeddings), ``eval_query_users.npy`` and TensorBoard logs. File names: trainer/artifacts.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

from trainer import artifacts, features as F, skeleton
from trainer.hparams import TrainerConfig
from trainer.query import QueryResolver
from trainer.retrieval import export, metrics as retrieval_metrics
from trainer.retrieval.model import RetrievalModel, add_sampling_probability
from trainer.retrieval.towers import build_towers
from trainer.raw_data import batched
from trainer.skeleton import Evaluation, Prepared, TrainingData
from trainer.training_logs import log
from trainer.warmup_requests import write_retrieval_warmup

KS = (10, 50, 100)
# The raw columns of the query a user is evaluated with (their first eval event).
QUERY_KEYS = (F.USER_ID, F.HISTORY_ITEM_IDS, F.HOUR_OF_DAY, F.DAY_OF_WEEK, F.HOURS_SINCE_PREV_EVENT)


def as_str(a: np.ndarray) -> np.ndarray:
    """bytes (or any) array -> str objects."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in a], dtype=object)


class RetrievalRecipe:
    """What the two-tower model adds to the training skeleton."""

    kind = "retrieval"

    def raw_keys(self, side_features: dict) -> dict[str, list[str]]:
        users = sorted(k for k in side_features if k.startswith(F.USER_FEATURE_PREFIX))
        return {artifacts.TRAIN: [F.USER_ID, F.ITEM_ID],
                artifacts.EVAL: [*QUERY_KEYS, F.ITEM_ID, F.TIMESTAMP, *users]}

    def datasets(self, data: TrainingData, hp) -> Prepared:
        counts = np.zeros(data.layout.num_items, dtype=np.int64)
        for ids in data.train.rows.map(lambda row: row[F.ITEM_ID_IDX]).batch(8192):
            np.add.at(counts, ids.numpy(), 1)
        sampling = add_sampling_probability(tf.constant(counts + 1))  # logQ correction
        batch_size = data.batch_size(hp.batch_size)
        return Prepared(
            train_ds=batched(data.train.rows, batch_size, True, hp.seed, sampling),
            eval_ds=batched(data.eval.rows, batch_size, False, hp.seed, sampling),
            probe=lambda model, ds: model.compute_loss(next(iter(ds))),
            describe=(f"encoder {hp.history_encoder}, {data.layout.num_items - 2} items, "
                      f"{data.layout.num_users - 2} users"))

    def build(self, data: TrainingData, hp, prepared: Prepared) -> tf.keras.Model:
        query_tower, candidate_tower = build_towers(data.layout, hp, data.history_length)
        model = RetrievalModel(query_tower, candidate_tower, hp)
        model.compile(optimizer=tf.keras.optimizers.Adam(hp.learning_rate))
        return model

    def evaluate(self, data: TrainingData, model, hp, prepared: Prepared) -> Evaluation:
        """User-level Recall/NDCG@K on the eval split, for the model and the popularity baseline.

        Each evaluated user is queried with the features of their first eval event (its
        history is the user's latest training items); the truth is every item they
        interacted with in eval and not in train; train items are excluded.
        """
        candidates = export.candidate_set(data, model.candidate_tower)
        train_items = pd.Series(as_str(data.train.raw[F.ITEM_ID])).value_counts()
        candidates["counts"] = train_items.reindex(candidates["ids"]).fillna(0).to_numpy(np.float64)
        resolver = QueryResolver(data.tft_layer, model.query_tower, data.layout, data.user_features, data.users,
                                 data.history_length)
        train, ev = data.train.raw, data.eval.raw
        frame = lambda d: pd.DataFrame({F.USER_ID: as_str(d[F.USER_ID]), F.ITEM_ID: as_str(d[F.ITEM_ID])})
        task = retrieval_metrics.build_eval_task(frame(train), frame(ev), candidates["ids"])
        # The first eval event of every evaluated user.
        order = np.lexsort((ev[F.TIMESTAMP], as_str(ev[F.USER_ID])))
        users_sorted = as_str(ev[F.USER_ID])[order]
        first = order[np.r_[True, users_sorted[1:] != users_sorted[:-1]]]
        by_user = {u: i for u, i in zip(as_str(ev[F.USER_ID])[first], first)}
        rows = np.array([by_user[u] for u in task.user_ids])
        query = {k: tf.constant(ev[k][rows]) for k in [*QUERY_KEYS, *sorted(data.user_features)]}
        q = resolver.resolve(query, fallback=False)[0].numpy()
        emb = candidates["embeddings"]
        model_metrics = retrieval_metrics.evaluate_scores(task, lambda r: q[r] @ emb.T, ks=KS)
        pop = np.asarray(candidates["counts"], dtype=np.float64)
        popularity = retrieval_metrics.evaluate_scores(task, lambda r: np.broadcast_to(pop, (len(r), len(pop))), ks=KS)
        metrics = {"model": model_metrics, "popularity": popularity, "num_eval_users": int(task.num_users)}
        log(f"retrieval: {fmt_metrics(metrics)}")
        return Evaluation(metrics=metrics,
                          run_files={artifacts.EVAL_QUERIES_FILE: q,
                                     artifacts.EVAL_QUERY_USERS_FILE: np.asarray(task.user_ids, dtype=str)},
                          state={"resolver": resolver, "candidates": candidates})

    def export(self, data: TrainingData, model, hp, evaluation: Evaluation, serving_dir: str) -> None:
        candidates, resolver = evaluation.state["candidates"], evaluation.state["resolver"]
        ids, emb = candidates["ids"], candidates["embeddings"]
        fetch_k = min(len(ids), hp.max_k + hp.exclusion_pad)
        module = export.RetrievalModule(resolver, export.brute_force_layer(emb, ids, fetch_k), candidates,
                                        hp.max_k, fetch_k, sorted(data.item_features), candidates["unknown_embedding"])
        export.save(module, serving_dir, data.user_features)
        write_retrieval_warmup(serving_dir, data.users, data.user_features, ids)


RECIPE = RetrievalRecipe()


def fmt_metrics(m: dict) -> str:
    return ", ".join(f"{k} {m['model'][k]:.4f} (popularity {m['popularity'][k]:.4f})"
                     for k in ("recall@10", "recall@100", "ndcg@10"))


def train_and_export(examples_uri: str, transform_dir: str, serving_dir: str, run_dir: str, side_features: dict,
                     history_length: int, config: TrainerConfig, log_dir: str | None = None,
                     base_model: str | None = None) -> dict:
    """The whole retrieval training; plain function so tests and benchmarks call it directly.

    ``config``: the typed trainer config (``trainer.hparams.trainer_config``);
    ``base_model``: the latest blessed retrieval model (TFX's ``fn_args.base_model``) to
    warm-start from (trainer/warm_start.py); None trains from scratch.
    """
    return skeleton.train_and_export(RECIPE, examples_uri, transform_dir, serving_dir, run_dir, side_features,
                                     history_length, config, log_dir=log_dir, base_model=base_model)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    skeleton.run_fn(RECIPE, fn_args)
