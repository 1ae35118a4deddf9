"""The --smoke paths of the index, serving and pipeline benchmarks, in-process via main([...]).

One module fixture trains tiny 1-epoch retrieval + ranking models (and the ScaNN
export) on the generated tiny dataset; the index and serving smokes run against
them (the serving smoke at the default --num-workers 1; its multi-worker path runs against
the real supervisor with stand-in workers). The pipeline smoke runs the data stage of configs/implicit_demo.yaml (a real
TFX pipeline, hence ``e2e``). About 2-3 minutes in all on 2 cores.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import common as C


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return C.build_tiny_serving(tmp_path_factory.mktemp("bench_tiny"))


def _positive(x) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def test_latency_summary_and_tiling():
    import numpy as np

    from bench.index_bench import exact_topk_chunked, recall, tile_candidates

    s = C.latency_summary([1.0, 2.0, 3.0, 4.0])
    assert s["n"] == 4 and s["p50_ms"] == 2.5 and s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
    assert C.latency_summary([])["p50_ms"] is None
    rng = np.random.default_rng(0)
    real = rng.standard_normal((50, 8)).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    tiled = tile_candidates(real, 1000, 0.5, 0)
    assert tiled.shape == (1000, 8) and np.allclose(tiled[:50], real)
    assert np.allclose(np.linalg.norm(tiled, axis=1), 1.0, atol=1e-5)
    q = rng.standard_normal((7, 8)).astype(np.float32)
    exact = np.argsort(-(q @ tiled.T), axis=1)[:, :10]
    chunked = exact_topk_chunked(q, tiled, 10, chunk=64)  # many chunks: the merge must be exact
    assert recall(chunked, exact) == 1.0


def test_index_bench_smoke(tiny_models, tmp_path, capsys):
    from bench import index_bench

    bf = f"{tiny_models['serving_dir']}/retrieval_brute_force/1"
    rc = index_bench.main(["--smoke", "--model-dir", bf, "--queries", f"{tiny_models['run_dir']}/eval_queries.npy",
                           "--out", str(tmp_path)])
    assert rc == 0
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"index_bench_smoke.{ext}").stat().st_size > 0
    report = json.loads((tmp_path / "index_bench_smoke.json").read_text())
    assert report["smoke"] and "eval_queries.npy" in report["queries_source"]
    sizes = {r["size"] for r in report["rows"]}
    assert sizes == {report["real_catalogue"], 5000}
    methods = {"exact (numpy)", "scann default", "scann fewer leaves", "scann more leaves+reorder", "scann no reorder"}
    for size in sizes:
        assert {r["method"] for r in report["rows"] if r["size"] == size} == methods
    for r in report["rows"]:
        assert 0.0 <= r["recall@10"] <= 1.0, r
        assert _positive(r["single_p50_ms"]) and r["single_p95_ms"] >= r["single_p50_ms"]
        assert _positive(r["batched_ms_per_query"]) and r["build_s"] >= 0
    exact = [r for r in report["rows"] if r["method"].startswith("exact")]
    assert all(r["recall@10"] == 1.0 for r in exact)
    by = {(r["size"], r["method"]): r for r in report["rows"]}
    for size in sizes:
        # The same leaves and asymmetric-hashing scores, only the top 10 re-scored exactly instead of
        # the default's top `reorder`: its candidates are a subset of the default's, so never better.
        assert by[size, "scann no reorder"]["recall@10"] <= by[size, "scann default"]["recall@10"] + 1e-9, size
    # A search of every leaf that re-scores every candidate exactly is exact search.
    complete = [r for r in report["rows"] if r["method"].startswith("scann")
                and r["params"]["num_leaves_to_search"] >= r["params"]["num_leaves"]
                and r["params"]["pre_reorder_num_neighbors"] >= r["size"]]
    assert {(r["size"], r["method"]) for r in complete} >= {(report["real_catalogue"], "scann default")}, report["rows"]
    assert all(r["recall@10"] == 1.0 for r in complete), complete
    default = next(r for r in report["rows"] if r["size"] == 5000 and r["method"] == "scann default")
    assert default["recall@10"] >= 0.9  # the pipeline's own parameters hold the floor's ballpark
    assert [r["model"] for r in report["signature_rows"]] == ["retrieval (ScaNN)", "retrieval_brute_force"]
    for r in report["signature_rows"]:
        assert _positive(r["single_p50_ms"]) and _positive(r["batched_ms_per_query"])
    assert "| scann default |" in capsys.readouterr().out


def test_serving_bench_smoke(tiny_models, tmp_path, capsys):
    from bench import serving_bench

    rc = serving_bench.main(["--smoke", "--serving-dir", tiny_models["serving_dir"], "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "serving_bench_smoke.json").read_text())
    assert (tmp_path / "serving_bench_smoke.md").exists()
    cells = {(r["op"], r["batching"], r["concurrency"]) for r in report["grpc"]}
    assert cells == {(op, b, c) for op in serving_bench.OPS for b in ("off", "on", "naive") for c in (1, 2)}
    # The default: one server process, the client threads' shared connection, as before --num-workers.
    assert report["num_workers"] == [1] and not report["connection_per_client"]
    assert all(r["num_workers"] == 1 and "workers_answered" not in r for r in report["grpc"])
    assert "| Workers |" in (tmp_path / "serving_bench_smoke.md").read_text()
    for r in report["grpc"]:
        assert r["errors"] == 0, r["first_error"]
        assert r["n"] >= 1 and _positive(r["p50_ms"]) and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert _positive(r["throughput_rps"])
    assert {r["op"] for r in report["inprocess"]} == set(serving_bench.OPS)
    assert all(_positive(r["p50_ms"]) for r in report["inprocess"])
    out = capsys.readouterr().out
    assert "gRPC/in-process" in out and "Issue 13's targets" in out
    targets = {t["target"]: t for t in report["targets"]}
    assert len(targets) == 6, targets
    # Every target but the concurrency-8 one (the smoke runs 1 and 2) is computed from the rows.
    assert targets["one-call recommend p99, c=8"]["value"] is None
    assert all(t["value"] is not None for key, t in targets.items() if "c=8" not in key), targets


# --num-workers without starting a real multi-worker server (its TensorFlow workers take ~40 s to load here;
# tests/serving/test_multiprocess_server.py runs real ones): the real supervisor with stand-in workers.
STAND_IN_SUPERVISOR = """
import json, sys
from serving.model_server import supervisor
from serving.model_server.cli import build_parser

class StandIn(supervisor.Supervisor):
    def _worker_command(self, index, fd):  # reports ready as a worker does (worker 1 later), then waits
        ready = json.dumps({"event": "ready", "lines": [f"gRPC listening on 127.0.0.1:{self.grpc_port}"]})
        code = (f"import socket, time; s = socket.socket(fileno={fd}); time.sleep({0.5 * index}); "
                f"print('worker {index}: ready', flush=True); s.sendall({ready!r}.encode() + bytes([10])); "
                "time.sleep(120)")
        return [sys.executable, "-c", sys.argv[1] if len(sys.argv) > 1 else code]

args = build_parser().parse_args(["--model_config_file", "unused.config", "--port", "0", "--monitoring_port", "none"])
sys.exit(StandIn(args, [], 2).run())
"""


def test_serving_bench_waits_for_every_worker(tmp_path, monkeypatch):
    import sys

    from bench import serving_bench

    config = serving_bench.server_config({"retrieval": tmp_path / "retrieval" / "1"})
    assert serving_bench.Server(config, None, "subprocess", tmp_path).command()[-2:] == ["--log_level", "WARNING"]
    server = serving_bench.Server(config, None, "subprocess", tmp_path, num_workers=2)
    assert "--num_workers" in server.command() and server.command()[server.command().index("--num_workers") + 1] == "2"
    with pytest.raises(ValueError):
        serving_bench.Server(config, None, "inprocess", tmp_path, num_workers=2)

    monkeypatch.setattr(serving_bench.Server, "_wait_models", lambda self, address, deadline: None)
    monkeypatch.setattr(serving_bench.Server, "command", lambda self: [sys.executable, "-c", STAND_IN_SUPERVISOR])
    try:
        address = server.start(timeout_s=60)
        output = "".join(server.output)
        assert address.startswith("127.0.0.1:") and f"gRPC listening on {address}" in output
        assert "worker 1: ready" in output and "all 2 workers ready" in output  # returned only after both
    finally:
        server.stop()
    assert "all workers stopped" in "".join(server.output)
    failing = serving_bench.Server(config, None, "subprocess", tmp_path, num_workers=2)  # workers refuse (exit 2)
    monkeypatch.setattr(serving_bench.Server, "command",
                        lambda self: [sys.executable, "-c", STAND_IN_SUPERVISOR, "import sys; sys.exit(2)"])
    with pytest.raises(RuntimeError, match="model server did not start"):
        failing.start(timeout_s=60)


def test_serving_bench_worker_counts_and_labels():
    from concurrent import futures

    import grpc

    from bench import serving_bench

    assert serving_bench.parse_args([]).num_workers == [1]
    assert serving_bench.parse_args(["--num-workers", "1,2,2"]).num_workers == [1, 2]
    assert serving_bench.parse_args(["--num-workers", "0"]).num_workers[0] >= 1
    for bad in (["--num-workers", "two"], ["--num-workers", "-1"], ["--server-mode", "inprocess", "--num-workers", "2"]):
        with pytest.raises(SystemExit):
            serving_bench.parse_args(bad)

    # Which worker answered: the server's trailing metadata, read by the bench's interceptor.
    def answer(request, context):
        context.set_trailing_metadata(((serving_bench.WORKER_METADATA, "1"),))
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(1))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.S", {"M": grpc.unary_unary_rpc_method_handler(answer)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        tally, seen = serving_bench.worker_tally()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert grpc.intercept_channel(channel, tally).unary_unary("/t.S/M")(b"", timeout=10) == b""
        assert seen == {1}
    finally:
        server.stop(0)

    # Rows of a run over two counts: labelled; the targets and the overhead table read the first count's.
    def row(op, batching, workers, conc, p50):
        return {"op": op, "batching": batching, "num_workers": workers, "concurrency": conc, "n": 4, "errors": 0,
                "p50_ms": p50, "p95_ms": p50, "p99_ms": p50, "throughput_rps": 100.0 / p50,
                "workers_answered": [0, 1][:workers] if batching != "naive" else []}

    report = {"smoke": True, "server_mode": "subprocess", "num_workers": [1, 2], "connection_per_client": True,
              "num_candidates": 30, "batching_options": {}, "cell_seconds": 10.0,
              "grpc": [row(op, "off", w, c, 10.0 * w) for w in (1, 2) for op in serving_bench.OPS for c in (1, 2)]
              + [row(op, "naive", 1, c, 5.0) for op in serving_bench.OPS for c in (1, 2)],
              "inprocess": [row(op, "-", 1, 1, 1.0) for op in serving_bench.OPS]}
    targets = {t["target"]: t for t in serving_bench.targets(report)}
    assert targets["one-call recommend p50 / p99, c=1"]["value"] == (10.0, 10.0)
    assert targets["one-call p50 c=1: our server minus the naive grpcio server"]["value"] == 5.0
    md = serving_bench.markdown(report)
    assert "--num_workers 1, 2" in md and "| Workers | Answered by |" in md
    assert "| one_call | off | 2 | 0,1 | 2 |" in md and "| one_call | naive | 1 | - | 1 |" in md


@pytest.mark.e2e
def test_pipeline_bench_smoke(tmp_path, capsys):
    from bench import pipeline_bench

    rc = pipeline_bench.main(["--smoke", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "pipeline_bench_smoke.json").read_text())
    (run,) = report["runs"]
    assert run["error"] is None and run["stage"] == "data" and run["events"] > 0
    names = [c["component"] for c in run["components"]]
    for component in ("ExampleBuilder", "StatisticsGen", "ExampleValidator", "DataGate", "Transform"):
        assert component in names
    for c in run["components"]:
        assert c["state"] == "COMPLETE" and c["seconds"] >= 0
        assert c["peak_rss_mb"] is None or c["peak_rss_mb"] > 0
    assert _positive(run["wall_seconds"]) and _positive(run["peak_rss_mb_tree_sampled"])
    assert run["peak_rss_mb_process_getrusage"] > 0
    assert "| Transform |" in (tmp_path / "pipeline_bench_smoke.md").read_text()


def test_grpc_floor_smoke(capsys):
    """The do-nothing grpcio round trip (bench/grpc_floor.py): a real subprocess server, real calls."""
    import re

    from bench import grpc_floor

    assert grpc_floor.main(["--requests", "20", "--items", "5"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.search(r"20 Predict calls, concurrency 1, 5 ids \+ scores back, \d+ cpu: p50 ([\d.]+) ms", line)
    assert m and 0 < float(m.group(1)) < 1000, line
