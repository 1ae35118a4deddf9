"""Bounded load against the model server on 127.0.0.1: latency percentiles and throughput.

    python -m bench.serving_bench [--serving-dir runs/movielens_100k/serving] \\
        [--config configs/movielens_100k.yaml] [--concurrency 1,8,32] [--batching off,on] \\
        [--server-mode subprocess|inprocess] [--num-workers 1|2|1,2] [--wait-seconds 1500] \\
        [--out bench/results] [--smoke]

Serves the newest ``retrieval`` (ScaNN), ``ranking`` and ``recommender`` (one-call)
versions of ``--serving-dir`` (a serving dir without ``recommender`` gets one built from
the other two into a temporary dir, by trainer/recommender/export.py) with the project's
model server (``python -m serving.model_server`` as a subprocess on free loopback ports
by default, so client and server do not share a GIL; or in-process ``ModelServer``),
once with server-side batching off and once on (``BatchingOptions``), and then with
the naive grpcio server of bench/naive_server.py as the anchor (``--anchor``; rows
with batching "naive"). ``--num-workers N`` (default 1) starts the model server with
``--num_workers N`` (a supervisor and N server processes sharing the port; needs the
subprocess server); a comma list (``1,2``) runs the batching off/on servers once per
count. Every row names its count (``num_workers``; the naive server is one process,
run once: 1). In such a run (a count above 1) every client thread gets its own
connection (``grpc.use_local_subchannel_pool``; otherwise the channels of one
process share one connection, which the kernel hands to one worker), also in its
count-1 and naive rows, and each row lists the workers that answered (the
``x-model-server-worker`` trailing metadata). For each of

- ``retrieval``: ``retrieval/recommend`` with k=100, one user per request;
- ``ranking``: ``ranking/score`` on 100 catalogue items (random, per request);
- ``two_stage``: ``RecommenderClient(recommender_model=None).recommend(user, k=10,
  num_candidates=100)`` (recommend + item_features + score RPCs; user id only, so no
  reasons call);
- ``one_call``: the same recommendation as one Predict on ``recommender``
  (``RecommenderClient.recommend``'s default; reasons included),

at each concurrency (threads, each with its own client/channel), every thread sends
at most ``ceil(--requests / concurrency)`` requests (at least ``--min-per-thread``) and
stops at the cell's time limit (``--cell-seconds``). Reported: p50/p95/p99 latency,
requests/s, errors. Then the same three operations called in-process on the loaded
SavedModels (sequentially), and the gRPC / in-process p50 ratio (concurrency 1,
batching off, the first ``--num-workers`` count). Users: the config's event table (``--config``) or the export's warmup
users. Writes ``<out>/serving_bench[_smoke].{json,md}`` and prints the tables.

``--smoke``: concurrency 1 and 2, a few requests each, in-process server (subprocess
when a ``--num-workers`` count is above 1); without ``--serving-dir`` it first trains
tiny 1-epoch models (bench.common.build_tiny_serving).
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bench import common as C

DEFAULT_SERVING = C.REPO_ROOT / "runs" / "movielens_100k" / "serving"
OPS = ("retrieval", "ranking", "two_stage", "one_call")
RETRIEVAL_K = 100
FINAL_K = 10


# -- models and inputs ---------------------------------------------------------------


def wait_for_models(serving_dir: Path, models: Sequence[str], wait_s: float, log=print) -> dict[str, Path]:
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        found = {m: C.newest_version(serving_dir / m) for m in models}
        if all(found.values()):
            return found
        if time.monotonic() >= deadline:
            missing = [m for m, v in found.items() if v is None]
            raise TimeoutError(f"no pushed version of {missing} under {serving_dir} after {wait_s:.0f}s")
        if not announced:
            log(f"[serving] waiting up to {wait_s:.0f}s for {models} under {serving_dir}", flush=True)
            announced = True
        time.sleep(10)


def server_config(versions: dict[str, Path]):
    """TF Serving ModelServerConfig serving exactly the given versions (as tfx_pipeline.demo.serving_config does)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for model, vdir in versions.items():
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = model, str(vdir.parent), "tensorflow"
        entry.model_version_policy.specific.versions.append(int(vdir.name))
    return config


def load_user_ids(args, retrieval_dir: Path, n: int, seed: int) -> list[str]:
    users: list[str] = []
    if args.config:
        from tfx_pipeline.config import load_config
        from tfx_pipeline.data.tables import load_events

        cfg = load_config(args.config)
        if Path(cfg.data.events.path if os.path.isabs(cfg.data.events.path)
                else C.REPO_ROOT / cfg.data.events.path).exists():
            users = sorted(map(str, load_events(cfg)["user_id"].unique()))
    if not users:
        from bench.index_bench import warmup_user_ids

        users = warmup_user_ids(retrieval_dir)
    rng = np.random.default_rng(seed)
    return [users[i] for i in rng.integers(0, len(users), n)]


class Workload:
    """Per-request arguments, cycled: user ids and ranking candidate lists."""

    def __init__(self, users: list[str], item_ids: list[str], num_candidates: int, seed: int):
        rng = np.random.default_rng(seed)
        self.users = users
        c = min(num_candidates, len(item_ids))
        self.candidates = [[item_ids[j] for j in rng.choice(len(item_ids), c, replace=False)] for _ in range(64)]

    def user(self, i: int) -> str:
        return self.users[i % len(self.users)]

    def cands(self, i: int) -> list[str]:
        return self.candidates[i % len(self.candidates)]


# -- gRPC load -----------------------------------------------------------------------


def grpc_op(client, op: str, w: Workload, i: int):
    from serving import names

    if op == "retrieval":
        meta = client.signature(names.RETRIEVAL_MODEL, names.RECOMMEND_SIGNATURE)
        client.predict(names.RETRIEVAL_MODEL, names.RECOMMEND_SIGNATURE,
                       C.neutral_query_inputs(meta.inputs, [w.user(i)], k=RETRIEVAL_K))
    elif op == "ranking":
        meta = client.signature(names.RANKING_MODEL, names.SCORE_SIGNATURE)
        client.predict(names.RANKING_MODEL, names.SCORE_SIGNATURE,
                       C.neutral_query_inputs(meta.inputs, [w.user(i)], candidates=[w.cands(i)]))
    elif op in ("two_stage", "one_call"):  # which one: the client's recommender_model (run_cell)
        recs = client.recommend(w.user(i), k=FINAL_K, num_candidates=RETRIEVAL_K)
        if not recs:
            raise RuntimeError("empty recommendation")
    else:
        raise ValueError(op)


WORKER_METADATA = "x-model-server-worker"  # gRPC trailing metadata of a --num_workers N > 1 server


def worker_tally():
    """A client interceptor and the set of worker indexes it saw in trailing metadata (multi-worker runs)."""
    import grpc

    seen: set[int] = set()

    class Tally(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            call = continuation(details, request)
            try:
                seen.update(int(v) for k, v in call.trailing_metadata() or () if k == WORKER_METADATA)
            except Exception:  # noqa: BLE001 - a failed call is counted by the caller
                pass
            return call

    return Tally(), seen


def run_cell(target: str, op: str, concurrency: int, per_thread: int, time_limit_s: float, w: Workload,
             timeout_s: float, own_connections: bool = False) -> dict:
    """One (op, concurrency) cell. own_connections: one TCP connection per client thread (not the process's
    shared one), so a --num_workers server's kernel can spread them; the row also lists who answered."""
    from serving import names
    from serving.client import DEFAULT_CHANNEL_OPTIONS, RecommenderClient

    one_call = names.RECOMMENDER_MODEL if op == "one_call" else None
    extra = {}
    if own_connections:
        tally, answered = worker_tally()
        extra = {"channel_options": (*DEFAULT_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)),
                 "interceptors": (tally,)}
    clients = [RecommenderClient(target, timeout_s=timeout_s, recommender_model=one_call, **extra)
               for _ in range(concurrency)]
    try:
        for c in clients:  # metadata cached, channel connected: not part of the measurement
            grpc_op(c, op, w, 0)
    except Exception as e:  # the cell fails, the run goes on
        for c in clients:
            c.close()
        return {"op": op, "concurrency": concurrency, **C.latency_summary([]), "errors": 1, "wall_s": 0.0,
                "throughput_rps": 0.0, "planned_requests": per_thread * concurrency,
                "first_error": f"warm-up call failed: {type(e).__name__}: {e}"[:300]}
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    start_evt = threading.Event()
    deadline = [0.0]

    def worker(t: int):
        start_evt.wait()
        for j in range(per_thread):
            if time.perf_counter() >= deadline[0]:
                break
            t0 = time.perf_counter()
            try:
                grpc_op(clients[t], op, w, t * per_thread + j + 1)
                lat[t].append((time.perf_counter() - t0) * 1000)
            except Exception as e:  # counted, reported
                errors[t] += 1
                if not first_error:
                    first_error.append(f"{type(e).__name__}: {e}"[:300])

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(concurrency)]
    for th in threads:
        th.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + time_limit_s
    start_evt.set()
    for th in threads:
        th.join(time_limit_s + timeout_s + 30)
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    all_lat = [x for l in lat for x in l]
    row = {"op": op, "concurrency": concurrency, **C.latency_summary(all_lat), "errors": int(sum(errors)),
           "wall_s": wall, "throughput_rps": len(all_lat) / wall if wall > 0 else 0.0,
           "planned_requests": per_thread * concurrency, "first_error": first_error[0] if first_error else None}
    if own_connections:
        row["workers_answered"] = sorted(answered)  # [] from a one-process server (no metadata)
    return row


class Server:
    """The model server, in-process (ModelServer) or as a subprocess (python -m serving.model_server)."""

    def __init__(self, config, batching, mode: str, workdir: Path, log=print, naive: bool = False,
                 num_workers: int = 1):
        self.config, self.batching, self.mode, self.workdir, self.log = config, batching, mode, workdir, log
        self.naive = naive  # bench/naive_server.py instead of the model server (always a subprocess)
        self.num_workers = num_workers  # > 1: the server's --num_workers (a supervisor and N workers)
        if num_workers > 1 and (naive or mode == "inprocess"):
            raise ValueError("num_workers > 1 needs the model server as a subprocess")
        self.proc = self.server = None
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.output: list[str] = []

    def command(self) -> list[str]:
        """The subprocess's command line (writes the config files it names into workdir)."""
        from google.protobuf import text_format

        cfg_path = self.workdir / "models.config"
        cfg_path.write_text(text_format.MessageToString(self.config))
        cmd = [sys.executable, "-m", "serving.model_server", "--model_config_file", str(cfg_path), "--port", "0",
               "--rest_api_port", "none", "--monitoring_port", "none", "--host", "127.0.0.1",
               "--log_level", "WARNING"]
        if self.naive:
            cmd = [sys.executable, "-m", "bench.naive_server", "--port", "0"]
            for entry in self.config.model_config_list.config:
                cmd += ["--model", f"{entry.name}={C.newest_version(Path(entry.base_path))}"]
        if self.num_workers > 1:
            cmd += ["--num_workers", str(self.num_workers)]
        if self.batching is not None and not self.naive:
            b = self.batching
            bpath = self.workdir / "batching.txt"
            bpath.write_text(f"max_batch_size {{ value: {b.max_batch_size} }}\n"
                             f"batch_timeout_micros {{ value: {b.batch_timeout_micros} }}\n"
                             f"num_batch_threads {{ value: {b.num_batch_threads} }}\n"
                             f"max_enqueued_batches {{ value: {b.max_enqueued_batches} }}\n")
            cmd += ["--enable_batching", "--batching_parameters_file", str(bpath)]
        return cmd

    def start(self, timeout_s: float = 600) -> str:
        if self.mode == "inprocess" and not self.naive:
            from serving.model_server import ModelServer

            self.server = ModelServer(self.config, grpc_port=0, rest_port=None, metrics_port=None,
                                      batching=self.batching)
            self.server.start()
            self.server.wait_until_available(timeout_s)
            return self.server.grpc_address
        cmd = self.command()
        env = {**os.environ, "PYTHONPATH": str(C.REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(cmd, cwd=str(C.REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        address = None
        # With --num_workers N > 1 the supervisor prints "gRPC listening on ..." once every worker has
        # loaded, then "all N workers ready (pids ...)"; workers' own lines start "worker i: ".
        all_ready = f"all {self.num_workers} workers ready" if self.num_workers > 1 else None
        while address is None or all_ready is not None:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line.startswith("gRPC listening on "):
                address = line.split("gRPC listening on ", 1)[1].strip()
            elif all_ready is not None and line.startswith(all_ready):
                all_ready = None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("model server did not start:\n" + "".join(self.output[-30:]))
        self._wait_models(address, deadline)
        return address

    def _pump(self):
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def _wait_models(self, address: str, deadline: float) -> None:
        from serving.client import RecommenderClient

        with RecommenderClient(address, timeout_s=10) as c:
            for entry in self.config.model_config_list.config:
                while True:
                    try:
                        c.invalidate_metadata(entry.name)
                        c.signatures(entry.name)
                        break
                    except Exception:
                        if self.proc.poll() is not None or time.monotonic() > deadline:
                            self.stop()
                            raise RuntimeError(f"model {entry.name} not available:\n" + "".join(self.output[-30:]))
                        time.sleep(0.5)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace_s=1.0)
            self.server = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()  # the supervisor forwards it to its workers, waiting up to 30 s for them
                try:
                    self.proc.wait(30 if self.num_workers == 1 else 45)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None


# -- in-process ------------------------------------------------------------------------


def inprocess_rows(versions: dict[str, Path], w: Workload, n: int, log=print) -> list[dict]:
    import scann  # noqa: F401
    import tensorflow as tf

    from serving import names

    retrieval = tf.saved_model.load(str(versions[names.RETRIEVAL_MODEL]))
    ranking = tf.saved_model.load(str(versions[names.RANKING_MODEL]))
    recommender = tf.saved_model.load(str(versions[names.RECOMMENDER_MODEL]))
    one_call = recommender.signatures[names.RECOMMEND_SIGNATURE]
    ospec = C.signature_specs(one_call)
    rec = retrieval.signatures[names.RECOMMEND_SIGNATURE]
    feats = retrieval.signatures[names.ITEM_FEATURES_SIGNATURE]
    score = ranking.signatures[names.SCORE_SIGNATURE]
    rspec, sspec = C.signature_specs(rec), C.signature_specs(score)

    def op_retrieval(i):
        return rec(**C.to_tensors(C.neutral_query_inputs(rspec, [w.user(i)], k=RETRIEVAL_K)))

    def op_ranking(i, cands=None):
        return score(**C.to_tensors(C.neutral_query_inputs(sspec, [w.user(i)], candidates=[cands or w.cands(i)])))

    def op_two_stage(i):
        out = op_retrieval(i)
        ids = [x.decode() for x in out[names.OUT_ITEM_IDS].numpy()[0] if x]
        feats(item_id=tf.constant([x.encode() for x in ids]))
        scored = op_ranking(i, ids)
        eng = scored[names.OUT_ENGAGEMENT].numpy().reshape(-1)
        return [ids[j] for j in np.argsort(-eng)[:FINAL_K]]

    def op_one_call(i):
        inputs = C.neutral_query_inputs(ospec, [w.user(i)], k=FINAL_K)
        inputs[names.NUM_CANDIDATES][:] = RETRIEVAL_K
        return one_call(**C.to_tensors(inputs))

    rows = []
    for op, fn in (("retrieval", op_retrieval), ("ranking", op_ranking), ("two_stage", op_two_stage),
                   ("one_call", op_one_call)):
        for i in range(3):
            fn(i)
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            fn(i + 1)
            lat.append((time.perf_counter() - t) * 1000)
        wall = time.perf_counter() - t0
        rows.append({"op": op, "concurrency": 1, **C.latency_summary(lat), "errors": 0, "wall_s": wall,
                     "throughput_rps": n / wall})
        log(f"[serving] in-process {op}: p50 {rows[-1]['p50_ms']:.2f} ms", flush=True)
    return rows


# -- report ------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    cols = ["Operation", "Batching", "Workers", "Concurrency", "Requests", "Errors", "p50 ms", "p95 ms", "p99 ms",
            "req/s"]
    rows = [[r["op"], r["batching"], r.get("num_workers", 1), r["concurrency"], r["n"], r["errors"], r["p50_ms"],
             r["p95_ms"], r["p99_ms"], r["throughput_rps"]] for r in report["grpc"]]
    own = report.get("connection_per_client", False)  # absent from reports before --num-workers
    if own:
        cols.insert(3, "Answered by")
        for row, r in zip(rows, report["grpc"]):
            row.insert(3, ",".join(map(str, r.get("workers_answered") or [])) or "-")
    workers = ", ".join(map(str, report.get("num_workers", [1])))
    head = (f"**Model server over gRPC (127.0.0.1, {report['server_mode']}, --num_workers {workers})**"
            f"{' (smoke)' if report['smoke'] else ''}: "
            f"retrieval = recommend k={RETRIEVAL_K}; ranking = score on {report['num_candidates']} candidates; "
            f"two_stage = RecommenderClient.recommend k={FINAL_K}, num_candidates={RETRIEVAL_K} over the separate "
            f"models; one_call = the same as one Predict on the recommender model. Batching naive = "
            f"bench/naive_server.py (the anchor, one process). Workers = the model server's --num_workers "
            f"(server processes); "
            + ("every client thread has its own connection; Answered by = the workers that answered "
               "(- = a one-process server). " if own else "the client threads share one connection (gRPC's "
               "subchannel pool). ")
            + f"Batching on = {report['batching_options']}. Cell limit {report['cell_seconds']}s.\n\n")
    out = head + C.md_table(cols, rows)
    ref = report.get("num_workers", [1])[0]
    out += ("\n**In-process (loaded SavedModels, sequential) and gRPC overhead** (gRPC at concurrency 1, batching off"
            f"{'' if ref == 1 else f', {ref} workers'})\n\n")
    rows = []
    for r in report["inprocess"]:
        g = next((x for x in report["grpc"] if x["op"] == r["op"] and x["concurrency"] == 1
                  and x["batching"] == "off" and x.get("num_workers", 1) == ref), None)
        ratio = g["p50_ms"] / r["p50_ms"] if g and g["p50_ms"] and r["p50_ms"] else None
        rows.append([r["op"], r["n"], r["p50_ms"], r["p95_ms"], r["p99_ms"], g["p50_ms"] if g else None, ratio])
    out += C.md_table(["Operation", "Calls", "in-process p50 ms", "p95 ms", "p99 ms", "gRPC p50 ms", "gRPC/in-process"],
                      rows)
    out += f"\n**Issue 13's targets, from the rows above** (batching off{'' if ref == 1 else f', {ref} workers'})\n\n"
    out += C.md_table(["Target", "Measured", "Goal"], [[t["target"], t["measured"], t["goal"]]
                                                       for t in targets(report)])
    return out


def targets(report: dict) -> list[dict]:
    """Issue 13's serving targets computed from one run's rows (None where a cell did not run).

    Our server's rows are those of the first --num-workers count; the naive anchor is one process.
    """
    ref = report.get("num_workers", [1])[0]

    def cell(op, conc, mode="off"):
        workers = 1 if mode == "naive" else ref
        return next((r for r in report["grpc"] if r["op"] == op and r["concurrency"] == conc
                     and r["batching"] == mode and r["n"] and r.get("num_workers", 1) == workers), None)

    def inproc(op):
        return next((r for r in report["inprocess"] if r["op"] == op), None)

    def fmt(x, unit=""):
        return None if x is None else f"{x:.2f}{unit}"

    out = []
    for op in ("retrieval", "ranking"):
        g, i = cell(op, 1), inproc(op)
        over = g["p50_ms"] - i["p50_ms"] if g and i else None
        out.append({"target": f"gRPC overhead over in-process, {op}, p50 c=1", "measured": fmt(over, " ms"),
                    "value": over, "goal": "<= 0.5 ms"})
    c1, c8 = cell("one_call", 1), cell("one_call", 8)
    out.append({"target": "one-call recommend p50 / p99, c=1",
                "measured": f"{fmt(c1['p50_ms'])} / {fmt(c1['p99_ms'], ' ms')}" if c1 else None,
                "value": (c1["p50_ms"], c1["p99_ms"]) if c1 else None, "goal": "<= 5 / <= 10 ms"})
    out.append({"target": "one-call recommend p99, c=8", "measured": fmt(c8["p99_ms"], " ms") if c8 else None,
                "value": c8["p99_ms"] if c8 else None, "goal": "<= 20 ms"})
    top = max((r["concurrency"] for r in report["grpc"]), default=None)
    one, two = cell("one_call", top), cell("two_stage", top)
    ratio = one["throughput_rps"] / two["throughput_rps"] if one and two and two["throughput_rps"] else None
    out.append({"target": f"one-call / two-stage throughput, c={top}", "measured": fmt(ratio, "x"), "value": ratio,
                "goal": ">= 3x"})
    naive, ours = cell("one_call", 1, "naive"), c1
    gap = ours["p50_ms"] - naive["p50_ms"] if naive and ours else None
    out.append({"target": "one-call p50 c=1: our server minus the naive grpcio server", "measured": fmt(gap, " ms"),
                "value": gap, "goal": "(anchor)"})
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serving_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--serving-dir", default=None, help=f"serving base path (default {DEFAULT_SERVING})")
    p.add_argument("--config", default=None, help="dataset config whose event table names the users")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--batching", default="off,on", help="comma list of off/on")
    p.add_argument("--max-batch-size", type=int, default=128,
                   help="batching on: rows per batch, also the largest request (item_features sends ~100 ids)")
    p.add_argument("--batch-timeout-micros", type=int, default=2000)
    p.add_argument("--requests", type=int, default=300, help="requests per cell, split over the threads")
    p.add_argument("--min-per-thread", type=int, default=10)
    p.add_argument("--cell-seconds", type=float, default=20.0, help="time limit of one (op, concurrency) cell")
    p.add_argument("--inprocess-requests", type=int, default=200)
    p.add_argument("--num-candidates", type=int, default=100, help="ranking candidates per request")
    p.add_argument("--timeout", type=float, default=30.0, help="client deadline per call")
    p.add_argument("--server-mode", choices=("subprocess", "inprocess"), default=None,
                   help="default subprocess (inprocess with --smoke, unless a --num-workers count is above 1)")
    p.add_argument("--num-workers", type=worker_counts, default=[1], metavar="N[,N...]",
                   help="the model server's --num_workers (server processes sharing the port; 0 = one per CPU "
                        "core); a comma list runs the batching off/on servers once per count (default 1)")
    p.add_argument("--wait-seconds", type=float, default=0.0, help="poll this long for the pushed models")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=True,
                   help="also run every cell against bench/naive_server.py (default on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(C.RESULTS))
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.server_mode == "inprocess" and max(args.num_workers) > 1:
        p.error("--num-workers above 1 needs --server-mode subprocess (the in-process ModelServer is one process)")
    return args


def worker_counts(text: str) -> list[int]:
    """--num-workers: a comma list of counts >= 1, or 0 = one per CPU core (the server's rule), resolved here."""
    from serving.model_server.supervisor import resolve_num_workers

    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"expected counts >= 0 (0 = one per CPU core), got {text!r}")
    resolved = [resolve_num_workers(n) for n in counts]
    return list(dict.fromkeys(resolved))  # in the given order, each once


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.concurrency, args.requests, args.min_per_thread = "1,2", 4, 2
        args.cell_seconds, args.inprocess_requests = min(args.cell_seconds, 10.0), 4
    args.server_mode = args.server_mode or ("inprocess" if args.smoke and max(args.num_workers) == 1
                                            else "subprocess")
    C.tf_env()
    import trainer  # noqa: F401  (Keras 2 before TensorFlow)
    import scann  # noqa: F401

    from serving import names
    from serving.model_server import BatchingOptions

    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="serving_bench_")
    try:
        if args.serving_dir:
            serving_dir = Path(args.serving_dir)
        elif args.smoke:
            serving_dir = Path(C.build_tiny_serving(Path(tmp.name) / "tiny")["serving_dir"])
        else:
            serving_dir = DEFAULT_SERVING
        models = (names.RETRIEVAL_MODEL, names.RANKING_MODEL)
        versions = wait_for_models(serving_dir, models, args.wait_seconds)
        versions[names.RECOMMENDER_MODEL] = C.newest_version(serving_dir / names.RECOMMENDER_MODEL)
        if versions[names.RECOMMENDER_MODEL] is None:  # a serving dir from before the one-call model
            from trainer.recommender.export import build

            built = Path(tmp.name) / names.RECOMMENDER_MODEL / "1"
            print(f"[serving] no {names.RECOMMENDER_MODEL} under {serving_dir}: building it from "
                  f"{versions[names.RETRIEVAL_MODEL]} and {versions[names.RANKING_MODEL]}", flush=True)
            build(str(versions[names.RETRIEVAL_MODEL]), str(versions[names.RANKING_MODEL]), str(built),
                  names.RECOMMENDER_MODEL, num_candidates=RETRIEVAL_K)
            versions[names.RECOMMENDER_MODEL] = built
        import tensorflow as tf

        loaded = tf.saved_model.load(str(versions[names.RETRIEVAL_MODEL]))
        loaded = loaded if hasattr(loaded, "candidate_ids") else loaded.base  # the ScaNN export wraps the base
        item_ids = [x.decode() for x in loaded.candidate_ids.numpy()]
        del loaded
        users = load_user_ids(args, versions[names.RETRIEVAL_MODEL], 1000, args.seed)
        w = Workload(users, item_ids, args.num_candidates, args.seed)
        ops = [o for o in args.ops.split(",") if o]
        concurrencies = [int(c) for c in args.concurrency.split(",") if c]
        batching_opts = BatchingOptions(max_batch_size=args.max_batch_size,
                                        batch_timeout_micros=args.batch_timeout_micros, num_batch_threads=2)
        print(f"[serving] {versions}; {len(item_ids)} items; ops {ops}; concurrency {concurrencies}; "
              f"server {args.server_mode}; --num_workers {args.num_workers}", flush=True)

        inproc = inprocess_rows(versions, w, args.inprocess_requests)
        grpc_rows = []
        config = server_config(versions)
        modes = [b for b in args.batching.split(",") if b]
        plan = [(mode, n) for n in args.num_workers for mode in modes] + ([("naive", 1)] if args.anchor else [])
        own_connections = max(args.num_workers) > 1  # every row of the run alike, so they compare
        for mode, num_workers in plan:
            server = Server(config, batching_opts if mode == "on" else None, args.server_mode, Path(tmp.name),
                            naive=mode == "naive", num_workers=num_workers)
            t0 = time.perf_counter()
            target = server.start()
            print(f"[serving] batching {mode}{'' if num_workers == 1 else f', {num_workers} workers'}: server at "
                  f"{target} ready in {time.perf_counter() - t0:.1f}s", flush=True)
            try:
                for op in ops:
                    for conc in concurrencies:
                        per_thread = max(args.min_per_thread, math.ceil(args.requests / conc))
                        r = run_cell(target, op, conc, per_thread, args.cell_seconds, w, args.timeout,
                                     own_connections=own_connections)
                        r["batching"], r["num_workers"] = mode, num_workers
                        grpc_rows.append(r)
                        print(f"[serving] {op:<9} batching {mode:<3} w={num_workers:<2} c={conc:<3} n={r['n']:<4} "
                              f"p50 {C.fmt(r['p50_ms'], 2)} p95 {C.fmt(r['p95_ms'], 2)} p99 {C.fmt(r['p99_ms'], 2)} ms "
                              f"{r['throughput_rps']:.1f} req/s errors {r['errors']}", flush=True)
            finally:
                server.stop()
        report = {"smoke": bool(args.smoke), "serving_dir": str(serving_dir),
                  "versions": {k: str(v) for k, v in versions.items()}, "server_mode": args.server_mode,
                  "num_workers": args.num_workers, "connection_per_client": own_connections,
                  "num_items": len(item_ids), "num_candidates": min(args.num_candidates, len(item_ids)),
                  "retrieval_k": RETRIEVAL_K, "final_k": FINAL_K, "cell_seconds": args.cell_seconds,
                  "requests_per_cell": args.requests,
                  "batching_options": {"max_batch_size": batching_opts.max_batch_size,
                                       "batch_timeout_micros": batching_opts.batch_timeout_micros,
                                       "num_batch_threads": batching_opts.num_batch_threads},
                  "grpc": grpc_rows, "inprocess": inproc, "host": C.host_info(), "anchor": bool(args.anchor),
                  "wall_seconds": round(time.perf_counter() - started, 2)}
        report["targets"] = targets(report)
    finally:
        tmp.cleanup()
    stem = "serving_bench" + ("_smoke" if args.smoke else "")
    md = markdown(report)
    js, mdp = C.write_report(report, md, args.out, stem)
    print()
    print(md)
    print(f"[serving] wrote {js} and {mdp}; wall time {report['wall_seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
