"""Distributed-training helpers run in their own processes (tests/trainer/test_multiworker.py,
tests/trainer/test_ranking.py): ``python -m tests.support.multiworker ARGS_JSON``.

One worker of a multi-worker run: ARGS_JSON {"examples_uri", "transform_dir", "side_features",
"history_length", "trainer": {trainer config sections}, and either "kinds": ["retrieval",
"ranking", ...] with "outputs": {kind: {"serving_dir", "run_dir", "log_dir" (may be null)}}, the
trainers run one after the other in this process (the strategy and its gRPC server are created
once: trainer/distribute.py), or a single "kind" (default "retrieval") with "serving_dir",
"run_dir", "log_dir" at the top level}. The cluster comes from the ``TF_CONFIG`` environment
variable the caller sets; the process trains with each trainer's ``train_and_export`` and prints
``trained <kind> <task> in <seconds> s`` after each, ``done <task>`` at the end. ``free_ports(n)`` picks loopback
ports for the cluster.

ARGS_JSON {"check": "mirrored_ranking"}: ``mirrored_ranking_check`` (it splits the CPU into logical
devices, which must happen before TensorFlow initializes its devices: hence its own process).
"""

from __future__ import annotations

import json
import socket
import sys
import time


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    """A TF_CONFIG for ``len(ports)`` workers on loopback (worker 0 is the chief), as task ``index``."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


# --- one batch of the ranking model under a 2-replica MirroredStrategy --------------------------

ROWS = 7  # the check's batch: split 5 + 2 over the two replicas (unevenly, as a last eval batch can be)
SHARDS = (slice(0, 5), slice(5, 7))
FIT_ROWS = 8  # one training step of a fit: 4 rows per replica
VAL_BATCH = 4  # its validation: the check's batch in batches of 4 and 3 rows
FIT_LOGS = ("loss", "rmse", "auc", "val_loss", "val_rmse", "val_auc", "loss_per_example", "val_loss_per_example")


def _ranking_batch(rows: int, seed: int) -> dict:
    """Model inputs of ``rows`` (query, item) rows over a hand-made layout (ids, history, context),
    with labels; the rating weight is 0 on every third row (as on a logged exposure)."""
    import numpy as np
    import tensorflow as tf

    from trainer import features as F

    rng = np.random.default_rng(seed)
    return {
        F.USER_ID_IDX: tf.constant(rng.integers(1, 8, rows), tf.int64),
        F.ITEM_ID_IDX: tf.constant(rng.integers(1, 12, rows), tf.int64),
        F.HISTORY_IDX: tf.constant(rng.integers(0, 12, (rows, 3)), tf.int64),
        F.HOUR_OF_DAY: tf.constant(rng.integers(1, F.HOURS_IN_DAY + 1, rows), tf.int64),
        F.DAY_OF_WEEK: tf.constant(rng.integers(1, F.DAYS_IN_WEEK + 1, rows), tf.int64),
        F.RECENCY_Z: tf.constant(rng.normal(size=rows), tf.float32),
        F.RATING_LABEL: tf.constant(rng.integers(1, 6, rows), tf.float32),
        F.ENGAGED_LABEL: tf.constant(rng.integers(0, 2, rows), tf.int64),
        F.RATING_WEIGHT: tf.constant([0.0 if r % 3 == 0 else 1.0 for r in range(rows)], tf.float32),
    }


def _ranking_model(batch: dict):
    """A small RankingModel (dropout 0: the gradients are deterministic), its variables built."""
    import tensorflow as tf

    from trainer import features as F
    from trainer.hparams import RankingHParams
    from trainer.model_inputs import FeatureLayout
    from trainer.ranking.model import RankingModel

    layout = FeatureLayout(
        sizes={F.USER_ID_IDX: 8, F.ITEM_ID_IDX: 12, F.HISTORY_IDX: 12,
               F.HOUR_OF_DAY: F.HOURS_IN_DAY + 1, F.DAY_OF_WEEK: F.DAYS_IN_WEEK + 1},
        user_cats=(), user_nums=(), item_cats=(), item_lists=(), item_nums=(), list_features=(F.HISTORY_IDX,))
    hp = RankingHParams(embedding_dim=8, num_cross_layers=1, deep_units=(16,), dropout=0.0,
                        rating_loss_weight=1.0, engagement_loss_weight=0.5)
    model = RankingModel(layout, hp, history_length=3, rating_mean=3.0, engagement_rate=0.4)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1))
    model(batch)
    return model


def _dense(g):
    import tensorflow as tf

    return None if g is None else tf.convert_to_tensor(g)


def mirrored_ranking_check(replicas: int = 2) -> dict:
    """The ranking model under the default strategy and under a ``replicas``-replica MirroredStrategy
    over logical CPU devices, from the same weights. Returns lists of floats (and two strings):

    - ``loss`` / ``loss_mirrored``: one ``ROWS``-row batch's loss, default vs the replicas' losses
      summed (the batch given to the replicas as ``SHARDS``: 5 + 2 rows); ``grads`` / ``grads_mirrored``:
      the global norm of the gradient and its first 20 entries, likewise (summed over the replicas,
      as the optimizer's all-reduce sums them); ``per_replica_rows``;
    - ``fit_<log>`` for each of ``FIT_LOGS`` (Keras' and trainer/training_logs.py PerExampleLoss's),
      ``fit_weights`` (the sum of every weight's squares after the step), ``fit_how`` and
      ``fit_per_example`` (PerExampleLoss's description), and their ``_mirrored``: one SGD step of
      ``model.fit`` on a ``FIT_ROWS``-row batch, validated on the check's batch in batches of
      ``VAL_BATCH`` rows (the last one, of 3 rows, split unevenly over two replicas);
    - ``grad_norm`` / ``grad_norm_mirrored``: trainer/training_logs.py GradientNormLogger's norm on
      the same probe batch; ``hand_loss``: the batch's loss computed in numpy from the heads'
      outputs (the weighted MSE and the BCE, each summed and divided by the rows).
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    import numpy as np

    from trainer import features as F
    from trainer.ranking.model import ENGAGEMENT_LOGIT, RATING
    from trainer.training_logs import GradientNormLogger, PerExampleLoss

    batch = _ranking_batch(ROWS, seed=1)
    fit_batch = _ranking_batch(FIT_ROWS, seed=2)
    tf.keras.utils.set_random_seed(0)
    single = _ranking_model(batch)
    weights = single.get_weights()
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    assert strategy.num_replicas_in_sync == replicas, strategy.num_replicas_in_sync
    with strategy.scope():
        mirrored = _ranking_model(batch)
    mirrored.set_weights(weights)

    def loss_and_grads(model, x):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, training=True)
        return loss, [_dense(g) for g in tape.gradient(loss, model.trainable_variables)]

    def summary(grads) -> list[float]:
        flat = np.concatenate([np.ravel(g) for g in grads if g is not None])
        return [float(np.linalg.norm(flat))] + [float(v) for v in flat[:20]]

    out: dict = {}
    loss, grads = loss_and_grads(single, batch)
    out["loss"], out["grads"] = [float(loss)], summary(grads)
    out_heads = single(batch)
    y, w = batch[F.RATING_LABEL].numpy(), batch[F.RATING_WEIGHT].numpy()
    e, logit = batch[F.ENGAGED_LABEL].numpy().astype(np.float64), out_heads[ENGAGEMENT_LOGIT].numpy()
    bce = np.maximum(logit, 0) - logit * e + np.log1p(np.exp(-np.abs(logit)))
    out["hand_loss"] = [float(np.sum(w * (y - out_heads[RATING].numpy()) ** 2) / ROWS
                              + 0.5 * np.sum(bce) / ROWS)]

    shards = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: v[SHARDS[ctx.replica_id_in_sync_group]] for k, v in batch.items()})

    @tf.function
    def run(x):
        return strategy.run(lambda b: (loss_and_grads(mirrored, b), tf.shape(b[F.RATING_LABEL])[0]), args=(x,))

    (per_replica_loss, per_replica_grads), rows = run(shards)
    out["per_replica_rows"] = [int(r) for r in strategy.experimental_local_results(rows)]
    out["loss_mirrored"] = [float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None))]
    out["grads_mirrored"] = summary([None if g is None else strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None)
                                     for g in per_replica_grads])

    def fit(model, replicas: int) -> dict:
        train = tf.data.Dataset.from_tensor_slices(fit_batch).batch(FIT_ROWS, drop_remainder=True)
        val = tf.data.Dataset.from_tensor_slices(batch).batch(VAL_BATCH)  # 4 + 3 rows
        logger = PerExampleLoss(model, train, val, replicas)
        h = model.fit(train, validation_data=val, epochs=1, verbose=0, callbacks=[logger]).history
        return {"fit_" + k: [float(v) for v in h[k]] for k in FIT_LOGS} | {
            "fit_weights": [float(sum(np.sum(np.square(v)) for v in model.get_weights()))],
            "fit_how": logger.scale["how"], "fit_per_example": logger.scale["per_example"]}

    for name, model in (("", single), ("_mirrored", mirrored)):
        probe = tf.data.Dataset.from_tensor_slices(batch).batch(ROWS)
        logger = GradientNormLogger(model, probe)
        logger.on_epoch_end(0, {})
        out["grad_norm" + name] = list(logger.norms)
    for name, model, replicas_in_sync in (("", single, 1), ("_mirrored", mirrored, replicas)):
        out.update({k + name: v for k, v in fit(model, replicas_in_sync).items()})
    return out


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    import trainer  # noqa: F401  (Keras 2 before TensorFlow)

    if args.get("check") == "mirrored_ranking":
        print("RESULT " + json.dumps(mirrored_ranking_check(int(args.get("replicas", 2)))), flush=True)
        return 0

    from trainer.distribute import cluster_task
    from trainer.hparams import trainer_config
    from trainer.ranking.train import train_and_export as train_ranking
    from trainer.retrieval.train import train_and_export as train_retrieval

    kinds = args.get("kinds") or [args.get("kind", "retrieval")]
    outputs = args.get("outputs") or {kinds[0]: args}
    config = trainer_config(args["trainer"])
    for kind in kinds:
        train_and_export = train_ranking if kind == "ranking" else train_retrieval
        out = outputs[kind]
        started = time.monotonic()
        train_and_export(args["examples_uri"], args["transform_dir"], out["serving_dir"], out["run_dir"],
                         args["side_features"], args["history_length"], config, log_dir=out.get("log_dir"))
        print(f"trained {kind} {cluster_task()} in {time.monotonic() - started:.0f} s", flush=True)
    print(f"done {cluster_task()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
