"""TFX Trainer ``run_fn`` for the two-tower retrieval model: its recipe for trainer/skeleton.py.

custom_config: {"side_features": {key: kind}, "history_length": N,
                "trainer": {...trainer sections of the dataset config...}}

Writes to the Model artifact the brute-force retrieval SavedModel (with warmup
requests) and, to the ModelRun artifact, what the gate, the index step and the
report read: ``metrics.json`` (Recall/NDCG@K of the model, of the popularity baseline
and of the classical ALS baseline, ``"als"`` (trainer/retrieval/classical.py), all on one
eval task, user-level protocol of trainer/retrieval/metrics.py; with ``trainer.evaluation``
also ``"beyond_accuracy"`` and ``"slices"`` from the same ranked lists, trainer/retrieval/slices.py, and
``"diagnosis"``: candidate norms vs popularity, the retrieved items' popularity deciles, the query inputs'
permutation importance, trainer/retrieval/diagnosis.py, with ``candidate_norms.npy``), ``history.json``
(per-epoch losses and gradient norms), ``eval_queries.npy`` (held-out query
embeddings), ``eval_query_users.npy`` and TensorBoard logs. File names: trainer/artifacts.py.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from trainer import artifacts, features as F, skeleton
from trainer.hparams import TrainerConfig
from trainer.splits import SplitConfig
from trainer.model_inputs import drop_context, drop_user_id
from trainer.query import QueryResolver
from trainer.retrieval import als_blend, classical, diagnosis, export, metrics as retrieval_metrics, prior, sequence, slices
from trainer.retrieval.model import (FUTURE_ITEMS, RetrievalModel, add_sampling_probability, draw_future_target,
                                     future_items, item_probabilities)
from trainer.retrieval.towers import build_towers
from trainer.raw_data import batched
from trainer.skeleton import Evaluation, Prepared, SplitData, TrainingData
from trainer.training_logs import log
from trainer.warmup_requests import write_retrieval_warmup

KS = (10, 50, 100)
# The raw columns of the query a user is evaluated with (their first eval event).
QUERY_KEYS = (F.USER_ID, F.HISTORY_ITEM_IDS, F.HOUR_OF_DAY, F.DAY_OF_WEEK, F.HOURS_SINCE_PREV_EVENT)


def as_str(a: np.ndarray) -> np.ndarray:
    """bytes (or any) array -> str objects."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in a], dtype=object)


def interactions(raw: dict) -> pd.DataFrame:
    """The (user_id, item_id) string columns of a split's raw columns, as the eval task takes them."""
    return pd.DataFrame({F.USER_ID: as_str(raw[F.USER_ID]), F.ITEM_ID: as_str(raw[F.ITEM_ID])})


def model_history_length(data: TrainingData, hp) -> int:
    """The history the retrieval model encodes and serves: under the sequence objective the
    user state's items (``examples.sequence_length``: its windows are cut from the events, not
    from the per-event rows), else the per-event rows' ``examples.history_length``."""
    return data.state_length if hp.objective == "sequence" else data.history_length


def first_rows(raw: dict, user_ids) -> np.ndarray:
    """Index of each user's first (earliest) row in ``raw`` (user_id, timestamp columns), in ``user_ids`` order."""
    users = as_str(raw[F.USER_ID])
    order = np.lexsort((raw[F.TIMESTAMP], users))
    first = order[np.r_[True, users[order][1:] != users[order][:-1]]]
    by_user = dict(zip(users[first], first))
    return np.array([by_user[u] for u in user_ids], dtype=np.int64)


class ValidationRetrieval(tf.keras.callbacks.Callback):
    """Adds ``val_<metric>`` (user-level, on the validation split) to each epoch's logs.

    The validation task is the eval protocol on train: truth = a user's validation items
    not among their fit items, fit items excluded, the whole catalogue ranked; each user
    queried with their first validation event's features (model inputs, no stored state).
    """

    def __init__(self, data: TrainingData, model, metric: str, max_users: int = 0, seed: int = 0,
                 fit_items: np.ndarray | None = None, history_length: int = 0):
        """``max_users`` > 0: a seeded sample of that many validation users (the whole
        catalogue is still ranked for each); 0 = every validation user.

        ``fit_items`` (the fit split's item index per row, file order) and ``history_length``
        longer than the rows' history: each user's query history is their last
        ``history_length`` fit items (``sequence.latest_items``), as the served state holds."""
        super().__init__()
        self.key, self.metric, self.retrieval = f"val_{metric}", metric, model
        self.k = int(metric.split("@")[1])
        self.item_inputs = export.item_model_inputs(data)
        self.item_ids = export.candidate_ids(data)
        fit, validation = interactions(data.fit.raw), interactions(data.validation.raw)
        self.task = retrieval_metrics.build_eval_task(fit, validation, self.item_ids)
        users = self.task.user_ids  # the users with something to find
        if max_users and len(users) > max_users:
            sample = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
            self.task = retrieval_metrics.build_eval_task(
                fit, validation[validation[F.USER_ID].isin(sample)], self.item_ids)
            log(f"retrieval: validation scored on {max_users:,} of {len(users):,} users "
                f"(trainer.selection.max_validation_users)")
        rows = first_rows(data.validation.raw, self.task.user_ids)
        # The query rows, in ``rows`` order: gathered once from the validation rows.
        keep = np.zeros(len(data.validation.raw[F.USER_ID]), bool)
        keep[rows] = True
        keep = tf.constant(keep)
        picked = (data.validation.rows.enumerate()
                  .filter(lambda i, row: tf.gather(keep, i)).map(lambda i, row: row))
        self.queries = next(iter(picked.padded_batch(max(len(rows), 1))), None)
        self.position = np.searchsorted(np.sort(rows), rows)  # task user -> row of self.queries
        if fit_items is not None and self.queries is not None and history_length > data.history_length:
            picked_users = as_str(data.validation.raw[F.USER_ID][np.sort(rows)])
            history = sequence.latest_items(as_str(data.fit.raw[F.USER_ID]), data.fit.raw[F.TIMESTAMP],
                                            fit_items.astype(np.int64), picked_users, history_length, 0)
            self.queries = {**self.queries, F.HISTORY_IDX: tf.constant(history)}

        # Each candidate's fit-split count (the popularity the validation queries may know).
        self.fit_counts = fit[F.ITEM_ID].value_counts().reindex(self.item_ids).fillna(0).to_numpy(np.float64)
        self.history_cap = max(history_length, data.history_length)  # the most history items a query carries

    def vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(query per task user, candidate per catalogue item) of the model as it is now; None
        when there is nothing to score."""
        if self.queries is None or not self.task.num_users:
            return None
        q = self.retrieval.query_tower(self.queries, training=False).numpy()[self.position]
        return q, self.retrieval.candidate_tower(self.item_inputs, training=False).numpy()

    @property
    def activity(self) -> np.ndarray:
        """int [task users]: fit items, capped at the history the queries carry (0: a cold user)."""
        return prior.task_activity(self.task, getattr(self, "history_cap", 0))

    def _metric(self, q: np.ndarray, c: np.ndarray, bias, scale=None, rows=None) -> float:
        """The metric of scores ``q . c + scale_u * bias`` (``scale``: per task user, None = 1;
        ``bias``: [N] or 0), over every task user or only ``rows`` (sorted)."""
        bias = np.asarray(bias, np.float32).reshape(1, -1)  # [1, N], or [1, 1] for a number
        scale = np.ones(len(q), np.float32) if scale is None else np.asarray(scale, np.float32)
        task = self.task
        if rows is not None:
            task, q, scale = task.subset(rows), q[rows], scale[rows]
        return retrieval_metrics.evaluate_scores(task, lambda r: q[r] @ c.T + scale[r, None] * bias,
                                                 ks=(self.k,))[self.metric]

    def score(self, bias: np.ndarray | None = None, scale=None) -> float:
        """The metric of the model as it is now, scores ``q . c`` (+ ``scale_u * bias`` per candidate)."""
        vectors = self.vectors()
        return 0.0 if vectors is None else self._metric(*vectors, 0.0 if bias is None else bias, scale)

    def prior_scales(self, betas, temperature: float, edges=prior.ACTIVITY_EDGES) -> tuple[np.ndarray, np.ndarray]:
        """(stored bias, per task user scale) serving each activity bucket its beta (``betas``)."""
        top, scales = prior.bucket_scales(betas)
        return (prior.item_bias(self.fit_counts, top, temperature),
                scales[prior.activity_buckets(self.activity, edges)])

    def select_blend(self, bias: np.ndarray, scale: np.ndarray, user_factors: np.ndarray, item_factors: np.ndarray,
                     grid=als_blend.GRID) -> tuple[float, dict]:
        """The ALS blend's w with the best validation metric, scores ``q . c + scale_u bias + w u . v``
        (``user_factors``: [task users, f], zeros for users ALS has none for)."""
        vectors = self.vectors()
        if vectors is None:
            return 0.0, {}
        q, c = vectors
        return als_blend.select(lambda w: self._metric(np.concatenate([q, w * user_factors], 1),
                                                       np.concatenate([c, item_factors], 1), bias, scale), grid)

    def select_prior(self, temperature: float, edges=prior.ACTIVITY_EDGES) -> dict:
        """The popularity prior's betas with the best validation metric (trainer/retrieval/prior.py):
        ``{"beta", "validation", "betas", "bucket_validation", "bucket_users", "edges"}``. A bucket
        of at least ``prior.MIN_COLD_USERS`` validation users gets its own beta, picked on them
        (``prior.COLD_GRID`` for the cold bucket, ``prior.GRID`` for the others); the others share
        ``beta``, picked on their users together, or on every user when those are fewer than that.
        When only one bucket is large enough and the rest is too small to pick on, every bucket
        shares ``beta`` (picked on every user)."""
        vectors = self.vectors()
        nb = len(edges) + 1
        bucket = prior.activity_buckets(self.activity, edges)
        users = np.bincount(bucket, minlength=nb)
        out = {"edges": list(edges), "bucket_users": users.tolist(), "bucket_validation": {}}
        if vectors is None:
            return {**out, "beta": 0.0, "validation": {}, "betas": [0.0] * nb}
        own = [b for b in range(nb) if users[b] >= prior.MIN_COLD_USERS]
        rest = np.flatnonzero(~np.isin(bucket, own))
        rows = rest if len(rest) >= prior.MIN_COLD_USERS else None
        beta, values = prior.select(lambda bias: self._metric(*vectors, bias, rows=rows), self.fit_counts,
                                    temperature)
        betas = [beta] * nb
        if len(own) > 1 or (own and rows is not None):  # one bucket of everyone: the shared beta is its own
            for b in own:  # the cold bucket's grid reaches further toward popularity alone
                betas[b], out["bucket_validation"][b] = prior.select(
                    lambda bias: self._metric(*vectors, bias, rows=np.flatnonzero(bucket == b)), self.fit_counts,
                    temperature, prior.COLD_GRID if b == 0 else prior.GRID)
        return {**out, "beta": beta, "validation": values, "betas": betas}

    def on_epoch_end(self, epoch, logs=None):
        value = self.score()
        if logs is not None:
            logs[self.key] = value
        log(f"retrieval: epoch {epoch + 1}: validation {self.metric} {value:.4f} ({self.task.num_users} users)")


def drop_unknowns(data: TrainingData, hp):
    """The training batches' map fn that teaches the "unknown" inputs a request may send: the
    context (``context_dropout``) and the user id (``user_id_dropout``: the OOV row)."""
    context = drop_context(hp.context_dropout, hp.seed)
    user = drop_user_id(hp.user_id_dropout, data.layout.num_users - 1, hp.seed)
    return lambda batch: user(context(batch))


def catalogue_softmax(data: TrainingData, hp) -> bool:
    """Whether the per-event objective's loss is the softmax over the whole catalogue
    (``negatives: catalogue`` and a catalogue of at most ``full_softmax_max_items``)."""
    if hp.negatives != "catalogue":
        return False
    size = len(data.items[F.ITEM_ID])
    if not sequence.full_softmax(size, hp):
        log(f"retrieval: negatives catalogue asked, but the catalogue has {size:,} items > full_softmax_max_items "
            f"{hp.full_softmax_max_items:,}: in-batch negatives instead")
        return False
    return True


class RetrievalRecipe:
    """What the two-tower model adds to the training skeleton."""

    kind = "retrieval"

    def raw_keys(self, side_features: dict) -> dict[str, list[str]]:
        users = sorted(k for k in side_features if k.startswith(F.USER_FEATURE_PREFIX))
        return {artifacts.TRAIN: [F.USER_ID, F.ITEM_ID],
                artifacts.EVAL: [*QUERY_KEYS, F.ITEM_ID, F.TIMESTAMP, *users]}

    def datasets(self, data: TrainingData, hp, train: SplitData, validation: SplitData | None) -> Prepared:
        counts = np.zeros(data.layout.num_items, dtype=np.int64)
        for ids in train.rows.map(lambda row: row[F.ITEM_ID_IDX]).batch(8192):
            np.add.at(counts, ids.numpy(), 1)
        sampling = add_sampling_probability(tf.constant(counts + 1))  # logQ correction
        unknown_context = drop_unknowns(data, hp)
        batch_size = data.batch_size(hp.batch_size)
        if not counts.sum():
            raise skeleton.TrainingDataError("retrieval: the train split is empty (after carving validation off "
                                             "it): nothing to train on")
        if hp.objective == "sequence":
            return self._sequence_datasets(data, hp, train, counts + 1)
        fit_batch = data.fit_batch_size(hp.batch_size, int(counts.sum()), self.kind)
        rows, train_map = train.rows, lambda b: sampling(unknown_context(b))
        full = catalogue_softmax(data, hp)
        catalogue = export.item_model_inputs(data) if (full or hp.uniform_negatives or hp.target_window > 1) else None
        if hp.target_window > 1:  # each row's positive drawn from the user's next target_window events
            event_items = sequence.event_columns(train.rows, [F.ITEM_ID_IDX])[F.ITEM_ID_IDX]
            future = future_items(event_items, train.raw[F.USER_ID], train.raw[F.TIMESTAMP], hp.target_window)
            rows = tf.data.Dataset.zip((train.rows, tf.data.Dataset.from_tensor_slices(future))).map(
                lambda row, f: {**row, FUTURE_ITEMS: f})
            draw = draw_future_target(catalogue, data.layout.num_items, hp.seed)
            train_map = lambda b: sampling(unknown_context(draw(b)))  # noqa: E731
        return Prepared(
            train_ds=batched(rows, fit_batch, True, hp.seed, train_map),
            eval_ds=batched(validation.rows, batch_size, False, hp.seed, sampling) if validation else None,
            probe=lambda model, ds: model.compute_loss(next(iter(ds))),
            extras={"item_counts": counts + 1, "catalogue_softmax": full, "catalogue": catalogue},
            describe=(f"encoder {hp.history_encoder}, {data.layout.num_items - 2} items, "
                      f"{data.layout.num_users - 2} users, "
                      + (f"positives from each user's next {hp.target_window} events, " if hp.target_window > 1 else "")
                      + ("softmax over the catalogue" if full else "in-batch softmax")))

    def _sequence_datasets(self, data: TrainingData, hp, train: SplitData, item_counts: np.ndarray) -> Prepared:
        """The sequence objective's batches: windows of each user's train events (trainer/retrieval/sequence.py)."""
        per_user = sequence.user_keys(data.layout)
        present = train.rows.element_spec
        keys = [F.ITEM_ID_IDX, *[k for k in sequence.CONTEXT_KEYS if k in present], *per_user]
        columns = sequence.event_columns(train.rows, keys)
        window = model_history_length(data, hp)
        stride = hp.sequence_stride or max(1, window // 2)
        windows = sequence.build_sequences(columns, train.raw[F.USER_ID], train.raw[F.TIMESTAMP],
                                           window, per_user, stride)
        count = len(windows.get(sequence.TARGETS, ()))
        if not count:
            raise skeleton.TrainingDataError(
                "retrieval: objective sequence needs users with at least two train events (each event after a "
                "user's first is a target); none has: use objective in_batch on this log")
        targets = int((windows[sequence.TARGETS] > 0).sum())
        batch = data.fit_batch_size(hp.sequence_batch_size, count, self.kind)
        ds = sequence.sequence_dataset(windows, batch, True, hp.seed, drop_unknowns(data, hp))
        catalogue = len(data.items[F.ITEM_ID])
        loss = ("full softmax" if sequence.full_softmax(catalogue, hp) else
                f"in-batch softmax (catalogue {catalogue:,} > full_softmax_max_items {hp.full_softmax_max_items:,})")
        return Prepared(
            train_ds=ds, eval_ds=None, probe=lambda model, d: model.compute_loss(next(iter(d))),
            extras={"item_counts": item_counts, "event_items": columns[F.ITEM_ID_IDX]},
            steps_per_epoch=count // batch, batch_size=batch,
            describe=(f"sequence objective: {count:,} windows of {window}, stride {stride} "
                      f"({targets:,} targets), "
                      f"{loss}, encoder {hp.history_encoder}, {catalogue:,} items"))

    def selection_monitor(self, data: TrainingData, model, hp, selection, prepared: Prepared):
        """User-level ``selection.retrieval_metric`` on the validation split, after every epoch."""
        callback = ValidationRetrieval(data, model, selection.retrieval_metric, selection.max_validation_users,
                                       hp.seed, prepared.extras.get("event_items"), model_history_length(data, hp))
        return callback.key, "max", callback

    def after_selection(self, data: TrainingData, model, hp, callback: ValidationRetrieval | None,
                        config: TrainerConfig | None = None):
        """The popularity prior's beta (``hp.popularity_prior``; -1: picked here on the validation
        split, on the selected weights, before the refit), then the ALS blend's w (``hp.als_blend``,
        the same way, given that beta), and the validation metric the served scores reach."""
        config = config or TrainerConfig()
        fixed_cold = None if hp.popularity_prior_cold == prior.AUTO else float(hp.popularity_prior_cold)
        edges = prior_edges(hp)
        if hp.popularity_prior != prior.AUTO:
            beta = float(hp.popularity_prior)
            picked = {"beta": beta, "betas": [beta] * (len(edges) + 1), "picked_on": "config"}
        elif callback is None:
            picked = {"beta": 0.0, "betas": [0.0] * (len(edges) + 1), "picked_on": "no validation split: off"}
        else:
            started = time.perf_counter()
            sel = callback.select_prior(hp.temperature, edges)
            picked = {**sel, "picked_on": "validation"}
            own = sel["bucket_validation"]
            split = ("; own beta in bucket(s) " + ", ".join(
                f"{prior.bucket_name(b, edges)} ({sel['bucket_users'][b]} users): {sel['betas'][b]:g}" for b in own)
                if own else "")
            log(f"retrieval: popularity prior {prior.describe(sel['beta'])}, picked on validation {callback.metric} "
                f"({', '.join(f'{b:g}: {v:.4f}' for b, v in sel['validation'].items())}){split} "
                f"({time.perf_counter() - started:.1f} s)")
        if fixed_cold is not None:
            picked["betas"][0] = fixed_cold
        picked["beta_cold"] = picked["betas"][0]
        picked["edges"] = list(edges)
        served = None
        if callback is not None:  # the served scores' value on all validation users
            served = callback.score(*callback.prior_scales(picked["betas"], hp.temperature, edges))
            picked["served_value"] = served
        hp = dataclasses.replace(hp, popularity_prior=picked["beta"], popularity_prior_cold=picked["betas"][0],
                                 prior_betas=tuple(float(b) for b in picked["betas"]))
        blend = self._pick_als_blend(data, hp, callback, config)
        if blend.get("validation"):
            served = blend["validation"][blend["w"]]
        return dataclasses.replace(hp, als_blend=blend["w"]), {
            "popularity_prior": picked, "als_blend": blend, **({"served_value": served} if served is not None else {})}

    def _pick_als_blend(self, data: TrainingData, hp, callback: ValidationRetrieval | None,
                        config: TrainerConfig) -> dict:
        """``hp.als_blend`` resolved (trainer/retrieval/als_blend.py): ``{"w", "picked_on"[, "validation"]}``."""
        if hp.als_blend == 0:
            return {"w": 0.0, "picked_on": "config"}
        if not config.baseline.enabled:
            log("retrieval: ALS blend off: trainer.baseline.enabled is false (the blend uses its ALS)")
            return {"w": 0.0, "picked_on": "baseline disabled: off"}
        if callback is None:
            if hp.als_blend == als_blend.AUTO:
                return {"w": 0.0, "picked_on": "no validation split: off"}
            return {"w": float(hp.als_blend), "picked_on": "config"}
        started = time.perf_counter()
        try:
            fit = classical.fit_als(interactions(data.fit.raw), callback.task, config.baseline)
        except Exception as e:  # noqa: BLE001  as the baseline: never stops the trainer
            log(f"retrieval: ALS blend off: ALS could not be fit on the fit split: {type(e).__name__}: {e}")
            return {"w": 0.0, "picked_on": f"ALS unavailable: off ({type(e).__name__})"}
        bias, scale = callback.prior_scales(served_betas(hp), hp.temperature, prior_edges(hp))
        grid = als_blend.GRID if hp.als_blend == als_blend.AUTO else (float(hp.als_blend),)
        w, values = callback.select_blend(bias, scale, fit.task_user_factors(), fit.item_factors, grid)
        log(f"retrieval: ALS blend {als_blend.describe(w)}, picked on validation {callback.metric} "
            f"({', '.join(f'{b:g}: {v:.4f}' for b, v in values.items())}; ALS {fit.factors} factors; "
            f"{time.perf_counter() - started:.1f} s)")
        return {"w": w, "picked_on": "validation" if hp.als_blend == als_blend.AUTO else "config",
                "validation": values}

    def build(self, data: TrainingData, hp, prepared: Prepared) -> tf.keras.Model:
        hp = skeleton.resolved(data, hp, self.kind)  # a no-op when fit_and_evaluate resolved it
        query_tower, candidate_tower = build_towers(data.layout, hp, model_history_length(data, hp))
        if hp.objective == "sequence":
            probabilities = item_probabilities(tf.constant(prepared.extras["item_counts"])).numpy()
            model = sequence.SequenceRetrievalModel(query_tower, candidate_tower, hp, export.item_model_inputs(data),
                                                    probabilities)
            model.compile(optimizer=tf.keras.optimizers.Adam(hp.learning_rate))
            return model
        full, catalogue, probabilities = prepared.extras["catalogue_softmax"], prepared.extras["catalogue"], None
        if hp.uniform_negatives or full:  # mixed negatives or the catalogue softmax: every item's inputs
            probabilities = item_probabilities(tf.constant(prepared.extras["item_counts"])).numpy()
        model = RetrievalModel(query_tower, candidate_tower, hp, catalogue, probabilities, full_softmax=full)
        model.compile(optimizer=tf.keras.optimizers.Adam(hp.learning_rate))
        return model

    def evaluate(self, data: TrainingData, model, hp, prepared: Prepared, config: TrainerConfig) -> Evaluation:
        """User-level Recall/NDCG@K on the eval split, for the model, the popularity baseline
        and the classical baseline (``config.baseline``: ALS on all of train), one eval task.

        Each evaluated user is queried with the features of their first eval event (its
        history is the user's latest training items); the truth is every item they
        interacted with in eval and not in train; train items are excluded. ALS scores
        cold users (no train rows) by popularity; if it cannot be fit, ``"als"`` holds
        ``"unavailable"`` (the reason) instead of metrics and the run goes on. With
        ``config.evaluation``, also the beyond-accuracy metrics, the slices and the diagnosis
        (trainer/retrieval/diagnosis.py: its permutation importance re-embeds the same raw query
        columns, ``query``, through ``embed``).
        """
        candidates = export.candidate_set(data, model.candidate_tower)
        train = interactions(data.train.raw)  # all of train is excluded and known, as served
        train_items = train[F.ITEM_ID].value_counts()
        candidates["counts"] = train_items.reindex(candidates["ids"]).fillna(0).to_numpy(np.float64)
        # The served scores' popularity prior (picked in after_selection; off when unresolved): the
        # bias at B = the largest bucket beta, each query's last component its bucket's share of it.
        beta, betas, edges = max(0.0, float(hp.popularity_prior)), served_betas(hp), prior_edges(hp)
        top, bucket_scale = prior.bucket_scales(betas)
        candidates["bias"] = bias = prior.item_bias(candidates["counts"], top, hp.temperature)
        candidates["prior_scales"] = bucket_scale
        candidates["prior_edges"] = edges
        history_length = model_history_length(data, hp)
        resolver = QueryResolver(data.tft_layer, model.query_tower, data.layout, data.user_features, data.users,
                                 history_length)
        ev = data.eval.raw
        task = retrieval_metrics.build_eval_task(train, interactions(ev), candidates["ids"])
        rows = first_rows(ev, task.user_ids)  # the first eval event of every evaluated user
        query = {k: ev[k][rows] for k in [*QUERY_KEYS, *sorted(data.user_features)]}  # raw columns, numpy
        if history_length > data.history_length:  # longer than the eval rows carry: the user's last train items
            query[F.HISTORY_ITEM_IDS] = sequence.latest_items(
                as_str(data.train.raw[F.USER_ID]), data.train.raw[F.TIMESTAMP], data.train.raw[F.ITEM_ID],
                list(task.user_ids), history_length, b"")

        def embed(columns: dict) -> np.ndarray:  # raw query columns -> query embeddings (no stored state)
            return resolver.resolve({k: tf.constant(v) for k, v in columns.items()}, fallback=False)[0].numpy()

        q = embed(query)
        emb = candidates["embeddings"]
        als, als_ranked, als_fit = classical.baseline_run(train, task, config.baseline, ks=KS)
        # The served scores' ALS block (picked in after_selection): ALS on all of train, this w.
        block = None
        if hp.als_blend > 0 and als_fit is not None:
            block = als_blend.AlsBlock.from_fit(als_fit, hp.als_blend)
        elif hp.als_blend > 0:
            log(f"retrieval: ALS blend w {hp.als_blend:g} not served: the ALS baseline is unavailable")
        candidates["als_block"] = block
        qs = als_blend.served_queries(q, block, None if block is None else hp.als_blend * als_fit.task_user_factors())
        cs = als_blend.served_candidates(emb, block)
        # Activity: train items, capped at the history a query carries (0: no stored history, and the
        # first eval event's history is empty too).
        scale = bucket_scale[prior.activity_buckets(prior.task_activity(task, history_length), edges)]
        model_metrics, ranked = retrieval_metrics.evaluate_and_rank(
            task, lambda r: qs[r] @ cs.T + scale[r, None] * bias[None, :], ks=KS)
        pop = np.asarray(candidates["counts"], dtype=np.float64)
        popularity, pop_ranked = retrieval_metrics.evaluate_and_rank(
            task, lambda r: np.broadcast_to(pop, (len(r), len(pop))), ks=KS)
        metrics = {"model": model_metrics, "popularity": popularity, "als": als,
                   "num_eval_users": int(task.num_users), "popularity_prior": beta, "popularity_prior_cold": betas[0],
                   "popularity_prior_buckets": {"edges": list(edges), "betas": list(betas)},
                   "als_blend": 0.0 if block is None else block.weight}
        if top > 0 or block is not None:  # what the prior and the blend changed, on the same task
            metrics["model_without_prior"] = retrieval_metrics.evaluate_scores(task, lambda r: q[r] @ emb.T, ks=KS)
        if block is not None:
            metrics["model_without_als"] = retrieval_metrics.evaluate_scores(
                task, lambda r: q[r] @ emb.T + scale[r, None] * bias[None, :], ks=KS)

        def served_query(columns: dict) -> np.ndarray:  # raw query columns -> [q, w u, s], as served
            users = as_str(columns[F.USER_ID])
            history = np.asarray(columns[F.HISTORY_ITEM_IDS]).reshape(len(users), -1)
            items = np.minimum((history != b"").sum(axis=1), history_length)
            served = als_blend.served_queries(embed(columns), block,
                                              None if block is None else block.query_rows(columns[F.USER_ID]))
            return prior.augment_queries(served, bucket_scale[prior.activity_buckets(items, edges)])
        run_files = {}
        if config.evaluation.enabled:
            ranked = {"model": ranked, "popularity": pop_ranked}
            if als_ranked is not None:  # ALS unavailable: no ALS figures in the slices
                ranked["als"] = als_ranked
            user_events = train[F.USER_ID].value_counts().reindex(task.user_ids).fillna(0).to_numpy(np.int64)
            metrics.update(slices.run_analysis(
                task, ranked, pop, emb, data.items, data.item_features,
                {k: ev[k][rows] for k in data.user_features}, data.user_features, user_events, KS, config.evaluation))
            started = time.perf_counter()
            norms, measured = diagnosis.candidate_norms(model.candidate_tower, export.item_model_inputs(data))
            metrics["diagnosis"], run_files[artifacts.CANDIDATE_NORMS_FILE] = diagnosis.diagnose(
                task, ranked, pop, norms, measured, query, served_query,
                prior.augment_candidates(cs, bias), sorted(data.user_features), KS,
                config.evaluation, hp.seed, started)
        log(f"retrieval: {fmt_metrics(metrics)}")
        if "unavailable" in als:
            log(f"retrieval: ALS baseline unavailable: {als['unavailable']}")
        else:
            log(f"retrieval: ALS baseline: {als['factors']} factors, {als['train_seconds']:.1f} s, "
                f"{als['cold_users']} cold user(s) scored by popularity")
        run_files.update({artifacts.EVAL_QUERIES_FILE: qs,  # as served, less the prior's 1 (the index step adds it)
                          artifacts.EVAL_QUERY_USERS_FILE: np.asarray(task.user_ids, dtype=str)})
        return Evaluation(metrics=metrics, run_files=run_files, state={"resolver": resolver, "candidates": candidates})

    def export(self, data: TrainingData, model, hp, evaluation: Evaluation, serving_dir: str) -> None:
        candidates, resolver = evaluation.state["candidates"], evaluation.state["resolver"]
        ids, emb = candidates["ids"], candidates["embeddings"]
        fetch_k = min(len(ids), hp.max_k + hp.exclusion_pad)
        served = export.served_candidates(emb, export.candidate_bias(candidates), candidates.get("als_block"))
        module = export.RetrievalModule(resolver, export.brute_force_layer(served, ids, fetch_k), candidates,
                                        hp.max_k, fetch_k, sorted(data.item_features), candidates["unknown_embedding"])
        export.save(module, serving_dir, data.user_features)
        write_retrieval_warmup(serving_dir, data.users, data.user_features, ids)


RECIPE = RetrievalRecipe()


def prior_edges(hp) -> tuple:
    """The popularity prior's activity buckets (trainer/retrieval/prior.py)."""
    return prior.ACTIVITY_EDGES if hp.popularity_prior_by_activity else prior.COLD_EDGES


def served_betas(hp) -> list[float]:
    """The beta of each activity bucket as resolved in after_selection; unresolved: ``popularity_prior``
    for every bucket, ``popularity_prior_cold`` for bucket 0 when set."""
    edges = prior_edges(hp)
    if hp.prior_betas and len(hp.prior_betas) == len(edges) + 1:
        return [max(0.0, float(b)) for b in hp.prior_betas]
    beta = max(0.0, float(hp.popularity_prior))
    cold = beta if hp.popularity_prior_cold == prior.AUTO else max(0.0, float(hp.popularity_prior_cold))
    return [cold] + [beta] * len(edges)


def fmt_metrics(m: dict) -> str:
    als = m.get("als") or {}
    return ", ".join(f"{k} {m['model'][k]:.4f} (popularity {m['popularity'][k]:.4f}"
                     + (f", ALS {als[k]:.4f})" if k in als else ")")
                     for k in ("recall@10", "recall@100", "ndcg@10"))


def train_and_export(examples_uri: str, transform_dir: str, serving_dir: str, run_dir: str, side_features: dict,
                     history_length: int, config: TrainerConfig, log_dir: str | None = None,
                     base_model: str | None = None, split: SplitConfig | None = None,
                     sequence_length: int = 0) -> dict:
    """The whole retrieval training; plain function so tests and benchmarks call it directly.

    ``split``: how the examples' eval split was cut (validation is carved the same way);
    ``config``: the typed trainer config (``trainer.hparams.trainer_config``);
    ``base_model``: the latest blessed retrieval model (TFX's ``fn_args.base_model``) to
    warm-start from (trainer/warm_start.py); None trains from scratch.
    """
    return skeleton.train_and_export(RECIPE, examples_uri, transform_dir, serving_dir, run_dir, side_features,
                                     history_length, config, log_dir=log_dir, base_model=base_model, split=split,
                                     sequence_length=sequence_length)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    skeleton.run_fn(RECIPE, fn_args)
