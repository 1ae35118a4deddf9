"""One worker of a multi-worker retrieval run: ``python -m tests.support.multiworker ARGS_JSON``.

ARGS_JSON: {"examples_uri", "transform_dir", "side_features", "history_length", "serving_dir",
"run_dir", "log_dir" (may be null), "trainer": {trainer config sections}, "kind": "retrieval" (default)
or "ranking"}. The cluster comes from the ``TF_CONFIG`` environment variable the caller sets
(tests/trainer/test_multiworker.py); the process trains with that trainer's ``train_and_export`` and
prints ``done <task>`` when it returns. ``free_ports(n)`` picks loopback ports for the cluster.
"""

from __future__ import annotations

import json
import socket
import sys


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


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    import trainer  # noqa: F401  (Keras 2 before TensorFlow)
    from trainer.distribute import cluster_task
    from trainer.hparams import trainer_config

    if args.get("kind", "retrieval") == "ranking":
        from trainer.ranking.train import train_and_export
    else:
        from trainer.retrieval.train import train_and_export
    train_and_export(args["examples_uri"], args["transform_dir"], args["serving_dir"], args["run_dir"],
                     args["side_features"], args["history_length"], trainer_config(args["trainer"]),
                     log_dir=args.get("log_dir"))
    print(f"done {cluster_task()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
