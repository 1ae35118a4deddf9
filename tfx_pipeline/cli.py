"""The ``recsys`` command.

  recsys demo [--config C]                 pipeline -> serve -> print a recommendation
  recsys data fetch [--config C]           materialize the dataset's tables
  recsys data make-spans --out D           cut the event log into dated spans
  recsys schema infer --config C           regenerate schemas/<dataset>/schema.pbtxt
  recsys pipeline run --config C [...]     run the TFX pipeline locally
  recsys pipeline compile --config C -o F  Kubeflow v2 pipeline spec JSON
  recsys serve [...]                       the TF-Serving-compatible model server
  recsys recommend --user U [...]          two-stage recommendations over gRPC
  recsys rollback --config C --model M     take the newest complete pushed version out of service
  recsys feedback build-span --config C --logs G --events E --out D --span N
                                           request logs + new events -> the next span
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_CONFIG = "configs/movielens_100k.yaml"


def _load(args):
    from tfx_pipeline.config import load_config, overrides_from_pairs

    return load_config(args.config, overrides_from_pairs(getattr(args, "set", None)) or None)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="dataset/pipeline YAML (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.retrieval.epochs=2 (repeatable)")


def cmd_data_fetch(args) -> int:
    cfg = _load(args)  # checked before the heavy imports below
    from tfx_pipeline.data.datasets import ensure_dataset

    ensure_dataset(cfg)
    return 0


def cmd_data_make_spans(args) -> int:
    cfg = _load(args)  # checked before the heavy imports below
    from tfx_pipeline.data.span_tools import make_spans

    rows = make_spans(cfg, args.out, args.spans, first_fraction=args.first_fraction, force=args.force)
    for r in rows:
        print(f"span-{r['span']}: {r['events']:,} events, {r['new_users']} new users, {r['new_items']} new items "
              f"({r['from']} .. {r['to']})")
    print(f"wrote {len(rows)} span(s) under {args.out}; point data.spans.base at it (see configs/*_daily.yaml)")
    return 0


def cmd_schema_infer(args) -> int:
    cfg = _load(args)  # checked before the heavy imports below
    from tfx_pipeline.data.schema_tools import infer_schema

    print(f"wrote {infer_schema(cfg, args.out)}; review the diff before committing it")
    return 0


def cmd_pipeline_run(args) -> int:
    cfg = _load(args)  # the whole config is checked before TFX and TensorFlow are imported
    from tfx_pipeline.local_runner import run_local

    run_local(cfg, stage=args.stage, beam_pipeline_args=args.beam_arg or None,
              enable_cache=not args.no_cache, verbose=args.verbose)
    from tfx_pipeline.summary import print_summary

    print_summary(cfg)
    return 0


def cmd_pipeline_compile(args) -> int:
    cfg = _load(args)  # checked before the heavy imports below
    from tfx_pipeline.kubeflow_paths import cluster_config

    cluster_config(cfg)  # every location a pod reads or writes, also before the heavy imports
    from tfx_pipeline.kubeflow_runner import compile_pipeline

    out = compile_pipeline(cfg, args.output, image=args.image, beam_pipeline_args=args.beam_arg or None)
    print(f"wrote Kubeflow v2 pipeline spec {out}")
    return 0


def cmd_rollback(args) -> int:
    from tfx_pipeline.rollback import rollback

    cfg = _load(args)
    print(rollback(cfg.serving_root / args.model, cfg.metadata_path))  # RollbackError: exit 2 with the reason
    return 0


def cmd_feedback_build_span(args) -> int:
    cfg = _load(args)  # checked before the heavy imports below
    from tfx_pipeline.data.feedback import build_span, format_summary

    summary = build_span(cfg, args.logs, args.events, args.out, args.span,
                         attribution_hours=args.attribution_hours, model=args.model, force=args.force)
    print(format_summary(summary))
    return 0


def cmd_demo(args) -> int:
    cfg = _load(args)  # checked before the heavy imports below
    from tfx_pipeline.demo import run_demo

    return run_demo(cfg, user=args.user, k=args.k, port=args.port, rest_port=args.rest_port,
                    keep_serving=not args.no_serve)


def _quiet_third_party() -> None:
    """Library deprecation chatter (google-cloud on Python 3.11, Keras) hides our progress lines."""
    import logging
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" not in argv:
        _quiet_third_party()
    # Delegate before building our parser, so `recsys serve --help` is the server's own.
    if argv and argv[0] == "serve":
        from serving.model_server.cli import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "recommend":
        from serving.recommend_cli import main as recommend_main

        return recommend_main(argv[1:])

    parser = argparse.ArgumentParser(prog="recsys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the pipeline, serve the pushed models, print a recommendation")
    _add_config(demo)
    demo.add_argument("--user", default=None, help="user to recommend for (default: the first known user)")
    demo.add_argument("--k", type=int, default=10)
    demo.add_argument("--port", type=int, default=8500)
    demo.add_argument("--rest-port", type=int, default=8501)
    demo.add_argument("--no-serve", action="store_true", help="stop the server after printing instead of serving on")

    data = sub.add_parser("data").add_subparsers(dest="data_command", required=True)
    fetch = data.add_parser("fetch", help="download/generate the config's tables if missing")
    _add_config(fetch)
    mk = data.add_parser("make-spans", help="cut the config's event log into dated spans span-1..N")
    _add_config(mk)
    mk.add_argument("--spans", type=int, default=3)
    mk.add_argument("--out", required=True, help="directory to write span-<k>/ into")
    mk.add_argument("--first-fraction", type=float, default=None,
                    help="share of events in span 1 (default: equal parts)")
    mk.add_argument("--force", action="store_true", help="replace a non-empty --out")

    schema = sub.add_parser("schema").add_subparsers(dest="schema_command", required=True)
    infer = schema.add_parser("infer", help="infer and curate the schema from the data")
    _add_config(infer)
    infer.add_argument("--out", default=None)

    pipe = sub.add_parser("pipeline").add_subparsers(dest="pipeline_command", required=True)
    run = pipe.add_parser("run", help="run the TFX pipeline with LocalDagRunner")
    _add_config(run)
    run.add_argument("--stage", choices=["data", "all"], default="all")
    run.add_argument("--no-cache", action="store_true")
    run.add_argument("--beam-arg", action="append", help="a Beam pipeline arg (repeatable)")
    run.add_argument("--verbose", action="store_true")
    comp = pipe.add_parser("compile", help="compile for Kubeflow Pipelines v2 (offline)")
    _add_config(comp)
    comp.add_argument("-o", "--output", default="runs/kubeflow/pipeline.json")
    comp.add_argument("--image", default="ghcr.io/example/recsys-pipeline:0.1.0")
    comp.add_argument("--beam-arg", action="append")

    rb = sub.add_parser("rollback", help="move the newest complete pushed version of a model aside "
                        "(refused when nothing older is complete; recorded in ML Metadata)")
    _add_config(rb)
    rb.add_argument("--model", required=True)

    fb = sub.add_parser("feedback").add_subparsers(dest="feedback_command", required=True)
    bs = fb.add_parser("build-span", help="model-server request logs + new events -> span-<N>/ (events, exposures)")
    _add_config(bs)
    bs.add_argument("--logs", required=True, action="append",
                    help="request log TFRecord files: a glob (quote it), file or directory (repeatable)")
    bs.add_argument("--events", required=True, help="the new events, in the config's events table format")
    bs.add_argument("--out", default=None, help="spans directory; writes <out>/span-<N>/ (default: data.spans.base)")
    bs.add_argument("--span", required=True, help="span number N (integer >= 0)")
    bs.add_argument("--attribution-hours", type=float, default=24.0,
                    help="an exposure is engaged if the user acted on the item this soon after (default: %(default)s)")
    bs.add_argument("--model", default="recommender",
                    help="logged model to read (default: %(default)s, the one-call model: what users were shown)")
    bs.add_argument("--force", action="store_true", help="replace an existing span-<N>/")

    args = parser.parse_args(argv)
    handler = {
        "demo": cmd_demo,
        "data": cmd_data_fetch,
        "schema": cmd_schema_infer,
        "rollback": cmd_rollback,
        "feedback": cmd_feedback_build_span,
    }.get(args.command)
    if args.command == "data" and args.data_command == "make-spans":
        handler = cmd_data_make_spans
    if args.command == "pipeline":
        handler = cmd_pipeline_run if args.pipeline_command == "run" else cmd_pipeline_compile
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one readable line for known user errors; full trace otherwise
        from tfx_pipeline.errors import user_error_message

        msg = user_error_message(e)
        if msg is None:
            raise
        print(f"recsys: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
