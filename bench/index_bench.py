"""ScaNN against exact search: recall@10, build time and query latency by catalogue size.

    python -m bench.index_bench [--model-dir runs/movielens_100k/serving/retrieval_brute_force/<v>] \\
        [--sizes 100000,1000000] [--queries eval_queries.npy] [--out bench/results] [--smoke]

Candidates: the real item embeddings of a retrieval export (its ``candidate_embeddings``
variable; default: the newest version under runs/movielens_100k/serving/retrieval_brute_force),
first at the real catalogue size, then tiled beyond it up to each ``--sizes`` entry:
synthetic row j is real row (j mod N) plus isotropic Gaussian noise of relative
norm ``--noise`` (default 0.5), rescaled to the norm of its source row (the towers'
outputs are L2-normalized, so rows stay on the unit sphere).

Queries: held-out query embeddings. In order of preference: ``--queries`` (an .npy),
the retrieval trainer's ``eval_queries.npy`` found under the pipeline root that holds
the model (``<root>/artifacts/*/model_run/*/eval_queries.npy``, newest), else the
export's ``query_embedding`` signature over the users named in its warmup requests.
The report says which was used.

For every size: exact brute force (numpy matmul + argpartition, candidates in chunks
of ``--chunk`` rows so 1M x 64 stays within memory) and one ScaNN index built with
``trainer.retrieval.index.scann_params(n, fetch_k)`` (the pipeline's parameters; fetch_k =
max_k + exclusion_pad = 200 by default), searched at the default setting and at
variants that override leaves_to_search / pre-reorder candidates at query time
(ScaNN's search-time overrides: the same as building with those values). Reported:
recall@10 against exact, build seconds (one build per size, shared by its variants),
single-query p50/p95 and batched (``--batch`` 256) per-query ms. Then, at the real
catalogue size, the exported ``recommend`` signature of the ScaNN ``retrieval`` export
against the ``retrieval_brute_force`` export, loaded in-process, single and batched.

Writes ``<out>/index_bench[_smoke].{json,md,png}`` and prints the tables.
``--smoke``: 5,000 candidates, 50 queries, a few signature calls: < 30 s.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bench import common as C

DEFAULT_BASE = C.REPO_ROOT / "runs" / "movielens_100k" / "serving"
K = 10


# -- candidates and queries ----------------------------------------------------------


def tile_candidates(real: np.ndarray, size: int, noise: float, seed: int) -> np.ndarray:
    """``real`` followed by noisy copies up to ``size`` rows, each rescaled to its source's norm."""
    n, d = real.shape
    if size <= n:
        return np.ascontiguousarray(real[:size], dtype=np.float32)
    out = np.empty((size, d), np.float32)
    out[:n] = real
    norms = np.linalg.norm(real, axis=1, keepdims=True).astype(np.float32)
    rng = np.random.default_rng(seed)
    step = 100_000
    for start in range(n, size, step):
        stop = min(size, start + step)
        src = np.arange(start, stop) % n
        base = real[src]
        g = rng.standard_normal((stop - start, d), dtype=np.float32) * (noise / np.sqrt(d))
        x = base / np.maximum(norms[src], 1e-12) + g
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out[start:stop] = x * norms[src]
    return out


def find_eval_queries(model_dir: Path) -> Optional[Path]:
    root = model_dir.resolve().parents[2] if len(model_dir.resolve().parents) > 2 else None
    if root is None:
        return None
    found = glob.glob(str(root / "artifacts" / "*" / "model_run" / "*" / "eval_queries.npy"))
    return Path(max(found, key=os.path.getmtime)) if found else None


def warmup_user_ids(model_dir: Path) -> list[str]:
    """Known user ids from the export's warmup requests (recommend / query_embedding)."""
    from serving import names
    from serving.model_server.warmup_file import read_warmup_requests

    users = []
    for req in read_warmup_requests(str(model_dir)):
        if names.USER_ID in req.inputs:
            users += [v.decode() for v in req.inputs[names.USER_ID].string_val if not v.startswith(b"__warmup")]
    return list(dict.fromkeys(users)) or ["1"]


def load_queries(args, model_dir: Path, model) -> tuple[np.ndarray, str]:
    if args.queries:
        return np.load(args.queries).astype(np.float32), f"--queries {args.queries}"
    found = find_eval_queries(model_dir)
    if found is not None:
        return np.load(found).astype(np.float32), f"retrieval trainer eval_queries.npy: {found}"
    from serving import names

    sig = model.signatures[names.QUERY_EMBEDDING_SIGNATURE]
    users = warmup_user_ids(model_dir)
    inputs = C.neutral_query_inputs(C.signature_specs(sig), users)
    emb = sig(**C.to_tensors(inputs))[names.OUT_EMBEDDING].numpy()
    return emb.astype(np.float32), f"query_embedding signature over the warmup users {users}"


# -- exact search ----------------------------------------------------------------------


def exact_topk_chunked(queries: np.ndarray, cands: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Exact top-k ids by dot product, candidates scanned in chunks (bounded memory)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(cands), chunk):
        s = queries @ cands[start:start + chunk].T
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kth=kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        best_i = np.concatenate([best_i, top + start], 1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, kth=k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
    return hits / float(exact.size)


def time_batched(fn, queries: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """(ms per query, concatenated results) of fn over the queries in batches."""
    outs = []
    t0 = time.perf_counter()
    for s in range(0, len(queries), batch):
        outs.append(fn(queries[s:s + batch]))
    ms = (time.perf_counter() - t0) * 1000 / len(queries)
    return ms, np.concatenate(outs, 0)


def time_single(fn, queries: np.ndarray) -> list[float]:
    fn(queries[0])  # warm
    lat = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        lat.append((time.perf_counter() - t) * 1000)
    return lat


# -- ScaNN -------------------------------------------------------------------------------


def variants(params: dict, n: int) -> dict[str, dict]:
    leaves, lts, reorder = params["num_leaves"], params["num_leaves_to_search"], params["num_reordering_candidates"]
    return {
        "scann default": {"leaves_to_search": lts, "reorder": reorder},
        "scann fewer leaves": {"leaves_to_search": max(1, lts // 2), "reorder": reorder},
        "scann more leaves+reorder": {"leaves_to_search": min(leaves, 2 * lts), "reorder": min(n, 2 * reorder)},
        "scann no reorder": {"leaves_to_search": lts, "reorder": K},  # AH scores only (top-10 re-sorted)
    }


def build_searcher(cands: np.ndarray, params: dict, fetch_k: int):
    """The same builder chain as tfrs.layers.factorized_top_k.ScaNN (what trainer.retrieval.index.scann_layer uses)."""
    import scann  # noqa: F401
    from scann.scann_ops.py import scann_ops
    import tensorflow as tf

    b = scann_ops.builder(db=tf.constant(cands), num_neighbors=fetch_k, distance_measure="dot_product")
    b = b.tree(num_leaves=params["num_leaves"], num_leaves_to_search=params["num_leaves_to_search"],
               training_iterations=params["training_iterations"])
    b = b.score_ah(dimensions_per_block=params["dimensions_per_block"])
    b = b.reorder(params["num_reordering_candidates"])
    return b.build()


def bench_size(size: int, real: np.ndarray, queries: np.ndarray, args, log=print) -> list[dict]:
    import tensorflow as tf

    from trainer.retrieval.index import scann_params

    cands = tile_candidates(real, size, args.noise, args.seed)
    single_q = queries[: args.single_queries]
    rows = []
    # Exact.
    exact_ms, exact = time_batched(lambda q: exact_topk_chunked(q, cands, K, args.chunk), queries, args.batch)
    single = time_single(lambda q: exact_topk_chunked(q[None, :], cands, K, args.chunk), single_q)
    rows.append({"size": size, "method": "exact (numpy)", "recall@10": 1.0, "build_s": 0.0,
                 "single_p50_ms": float(np.percentile(single, 50)), "single_p95_ms": float(np.percentile(single, 95)),
                 "batched_ms_per_query": exact_ms, "params": {"chunk": args.chunk}})
    log(f"[index] n={size:,} exact: batched {exact_ms:.3f} ms/q, single p50 {rows[-1]['single_p50_ms']:.2f} ms")
    # ScaNN: one build, search-time variants.
    params = scann_params(size, args.fetch_k)
    t0 = time.perf_counter()
    searcher = build_searcher(cands, params, args.fetch_k)
    build_s = time.perf_counter() - t0
    for name, v in variants(params, size).items():
        lts, pre = v["leaves_to_search"], v["reorder"]

        def batched(q, lts=lts, pre=pre):
            return searcher.search_batched_parallel(tf.constant(q), final_num_neighbors=K, pre_reorder_num_neighbors=pre,
                                                    leaves_to_search=lts).indices.numpy()

        def one(q, lts=lts, pre=pre):
            return searcher.search(tf.constant(q), final_num_neighbors=K, pre_reorder_num_neighbors=pre,
                                   leaves_to_search=lts).index.numpy()

        batched(queries[: min(len(queries), args.batch)])  # warm
        ms, found = time_batched(batched, queries, args.batch)
        single = time_single(one, single_q)
        rows.append({"size": size, "method": name, "recall@10": recall(found, exact), "build_s": build_s,
                     "single_p50_ms": float(np.percentile(single, 50)),
                     "single_p95_ms": float(np.percentile(single, 95)), "batched_ms_per_query": ms,
                     "params": {**params, "num_leaves_to_search": lts, "pre_reorder_num_neighbors": pre}})
        log(f"[index] n={size:,} {name}: recall@10 {rows[-1]['recall@10']:.4f}, batched {ms:.4f} ms/q, "
            f"single p50 {rows[-1]['single_p50_ms']:.3f} ms (build {build_s:.1f}s)")
    del searcher, cands
    return rows


# -- through the exported signature ----------------------------------------------------------


def bench_signatures(scann_dir: Optional[Path], bf_dir: Path, args, log=print) -> list[dict]:
    import scann  # noqa: F401  registers the Scann ops before the ScaNN export loads
    import tensorflow as tf

    from serving import names

    rows = []
    users = warmup_user_ids(bf_dir)
    for label, d in (("retrieval (ScaNN)", scann_dir), ("retrieval_brute_force", bf_dir)):
        if d is None or not (d / "saved_model.pb").exists():
            log(f"[index] no {label} export; skipped")
            continue
        model = tf.saved_model.load(str(d))
        sig = model.signatures[names.RECOMMEND_SIGNATURE]
        specs = C.signature_specs(sig)
        one = C.to_tensors(C.neutral_query_inputs(specs, users[:1], k=K))
        batch_users = [users[i % len(users)] for i in range(args.batch)]
        many = C.to_tensors(C.neutral_query_inputs(specs, batch_users, k=K))
        for _ in range(3):
            sig(**one)
        sig(**many)
        single = []
        for _ in range(args.signature_requests):
            t = time.perf_counter()
            sig(**one)[names.OUT_ITEM_IDS].numpy()
            single.append((time.perf_counter() - t) * 1000)
        reps = max(2, args.signature_requests // 20)
        t = time.perf_counter()
        for _ in range(reps):
            sig(**many)[names.OUT_ITEM_IDS].numpy()
        per_q = (time.perf_counter() - t) * 1000 / (reps * args.batch)
        emb = model.candidate_embeddings if hasattr(model, "candidate_embeddings") else model.base.candidate_embeddings
        n = int(emb.shape[0])
        rows.append({"model": label, "export": str(d), "num_candidates": n,
                     "single_p50_ms": float(np.percentile(single, 50)),
                     "single_p95_ms": float(np.percentile(single, 95)),
                     "batched_ms_per_query": per_q, "batch": args.batch, "single_requests": len(single)})
        log(f"[index] signature {label}: single p50 {rows[-1]['single_p50_ms']:.2f} ms, batched {per_q:.3f} ms/q")
        del model
    return rows


# -- report ------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    cols = ["Candidates", "Method", "Recall@10", "Build s", "Single p50 ms", "Single p95 ms", "Batched ms/query",
            "leaves searched / reorder"]
    rows = []
    for r in report["rows"]:
        p = r["params"]
        knobs = (f"{p['num_leaves_to_search']}/{p['num_leaves']} / {p['pre_reorder_num_neighbors']}"
                 if "num_leaves" in p else "-")
        rows.append([f"{r['size']:,}", r["method"], r["recall@10"], round(r["build_s"], 2), r["single_p50_ms"],
                     r["single_p95_ms"], r["batched_ms_per_query"], knobs])
    head = (f"**ScaNN vs exact search**{' (smoke)' if report['smoke'] else ''}: {report['num_queries']} queries "
            f"({report['queries_source']}), dim {report['dim']}, real catalogue {report['real_catalogue']:,} "
            f"items, synthetic rows noise {report['noise']}; batch {report['batch']}; single-query latency over "
            f"{report['single_queries']} queries\n\n")
    out = head + C.md_table(cols, rows)
    if report["signature_rows"]:
        out += (f"\n**Through the exported `recommend` signature** (in-process, k={K}, "
                f"{report['signature_rows'][0]['num_candidates']:,} candidates)\n\n")
        out += C.md_table(["Export", "Single p50 ms", "Single p95 ms", f"Batched ({report['batch']}) ms/query"],
                          [[r["model"], r["single_p50_ms"], r["single_p95_ms"], r["batched_ms_per_query"]]
                           for r in report["signature_rows"]])
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = sorted({r["size"] for r in report["rows"]})
    for i, size in enumerate(sizes):
        rs = [r for r in report["rows"] if r["size"] == size]
        color = f"C{i}"
        sc = [r for r in rs if r["method"].startswith("scann")]
        ax.plot([r["batched_ms_per_query"] for r in sc], [r["recall@10"] for r in sc], "o-", color=color,
                label=f"ScaNN n={size:,}")
        for r in sc:
            ax.annotate(r["method"].replace("scann ", ""), (r["batched_ms_per_query"], r["recall@10"]), fontsize=6)
        ex = [r for r in rs if r["method"].startswith("exact")]
        ax.plot([r["batched_ms_per_query"] for r in ex], [1.0] * len(ex), "s", color=color, mfc="none",
                label=f"exact n={size:,}")
    ax.set_xscale("log")
    ax.set_xlabel(f"batched latency, ms per query (batch {report['batch']})")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title("ScaNN recall vs latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.index_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None,
                   help="retrieval_brute_force version dir (default: newest under runs/movielens_100k/serving)")
    p.add_argument("--scann-dir", default=None, help="ScaNN retrieval version dir (default: newest sibling)")
    p.add_argument("--queries", default=None, help=".npy of query embeddings (default: eval_queries.npy)")
    p.add_argument("--sizes", default="100000,1000000", help="catalogue sizes beyond the real one")
    p.add_argument("--num-queries", type=int, default=1000)
    p.add_argument("--single-queries", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--fetch-k", type=int, default=200, help="k for scann_params (pipeline: max_k + exclusion_pad)")
    p.add_argument("--noise", type=float, default=0.5, help="relative noise of the synthetic rows")
    p.add_argument("--chunk", type=int, default=100_000, help="exact search: candidates per chunk")
    p.add_argument("--signature-requests", type=int, default=200, help="single calls per exported signature")
    p.add_argument("--no-signatures", action="store_true", help="skip the exported-signature timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(C.RESULTS))
    p.add_argument("--smoke", action="store_true", help="5,000 candidates, 50 queries: < 30 s")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.sizes, args.num_queries, args.single_queries, args.signature_requests = "5000", 50, 20, 10
        args.batch = min(args.batch, 25)
    C.tf_env()
    import trainer  # noqa: F401  (Keras 2 before TensorFlow)
    import scann  # noqa: F401
    import tensorflow as tf

    from serving import names

    started = time.perf_counter()
    model_dir = Path(args.model_dir) if args.model_dir else C.newest_version(DEFAULT_BASE / names.RETRIEVAL_BRUTE_FORCE_MODEL)
    if model_dir is None or not (Path(model_dir) / "saved_model.pb").exists():
        print(f"[index] no retrieval_brute_force export (looked in {args.model_dir or DEFAULT_BASE}); "
              "run the pipeline or pass --model-dir", file=sys.stderr)
        return 2
    model_dir = Path(model_dir)
    scann_dir = Path(args.scann_dir) if args.scann_dir else C.newest_version(model_dir.parent.parent / names.RETRIEVAL_MODEL)
    model = tf.saved_model.load(str(model_dir))
    real = model.candidate_embeddings.numpy().astype(np.float32)
    queries, source = load_queries(args, model_dir, model)
    del model
    rng = np.random.default_rng(args.seed)
    if len(queries) >= args.num_queries:
        queries = queries[rng.permutation(len(queries))[: args.num_queries]]
    else:  # fewer held-out queries than asked: resample with replacement
        queries = queries[rng.integers(0, len(queries), args.num_queries)]
    queries = np.ascontiguousarray(queries, np.float32)
    norms = np.linalg.norm(real, axis=1)
    print(f"[index] {len(real):,} real candidates dim {real.shape[1]} (norm {norms.min():.3f}..{norms.max():.3f}) "
          f"from {model_dir}; {len(queries)} queries from {source}", flush=True)
    sizes = [len(real)] + [int(s) for s in args.sizes.split(",") if s and int(s) != len(real)]
    rows = []
    for size in sizes:
        rows += bench_size(size, real, queries, args)
    sig_rows = [] if args.no_signatures else bench_signatures(scann_dir, model_dir, args)
    report = {"smoke": bool(args.smoke), "model_dir": str(model_dir), "scann_dir": str(scann_dir) if scann_dir else None,
              "queries_source": source, "num_queries": int(len(queries)), "single_queries": args.single_queries,
              "dim": int(real.shape[1]), "real_catalogue": int(len(real)), "noise": args.noise, "batch": args.batch,
              "fetch_k": args.fetch_k, "k": K, "sizes": sizes, "rows": rows, "signature_rows": sig_rows,
              "host": C.host_info(), "wall_seconds": round(time.perf_counter() - started, 2)}
    stem = "index_bench" + ("_smoke" if args.smoke else "")
    md = markdown(report)
    js, mdp = C.write_report(report, md, args.out, stem)
    png = Path(args.out) / f"{stem}.png"
    plot(report, png)
    print()
    print(md)
    print(f"[index] wrote {js}, {mdp}, {png}; wall time {report['wall_seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
