"""The ``recsys`` command.

  recsys demo [--config C]                 pipeline -> serve -> print a recommendation
  recsys data fetch [--config C]           materialize the dataset's tables
  recsys schema infer --config C           regenerate schemas/<dataset>/schema.pbtxt
  recsys pipeline run --config C [...]     run the TFX pipeline locally
  recsys pipeline compile --config C -o F  Kubeflow v2 pipeline spec JSON
  recsys serve [...]                       the TF-Serving-compatible model server
  recsys recommend --user U [...]          two-stage recommendations over gRPC
  recsys rollback --config C --model M     take the newest pushed version out of service
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_CONFIG = "configs/movielens_100k.yaml"


def _load(args):
    from tfx_pipeline.config import load_config

    overrides = {}
    for item in getattr(args, "set", None) or []:
        key, _, value = item.partition("=")
        import yaml

        node = overrides
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return load_config(args.config, overrides or None)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="dataset/pipeline YAML (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.retrieval.epochs=2 (repeatable)")


def cmd_data_fetch(args) -> int:
    from tfx_pipeline.datasets import ensure_dataset

    ensure_dataset(_load(args))
    return 0


def cmd_schema_infer(args) -> int:
    from tfx_pipeline.schema_tools import infer_schema

    print(f"wrote {infer_schema(_load(args), args.out)}; review the diff before committing it")
    return 0


def cmd_pipeline_run(args) -> int:
    from tfx_pipeline.local_runner import run_local

    run_local(_load(args), stage=args.stage, beam_pipeline_args=args.beam_arg or None,
              enable_cache=not args.no_cache, verbose=args.verbose)
    from tfx_pipeline.summary import print_summary

    print_summary(_load(args))
    return 0


def cmd_pipeline_compile(args) -> int:
    from tfx_pipeline.kubeflow_runner import compile_pipeline

    out = compile_pipeline(_load(args), args.output, image=args.image, beam_pipeline_args=args.beam_arg or None)
    print(f"wrote Kubeflow v2 pipeline spec {out}")
    return 0


def cmd_rollback(args) -> int:
    from tfx_pipeline.rollback import rollback

    cfg = _load(args)
    print(rollback(cfg.serving_root / args.model))
    return 0


def cmd_demo(args) -> int:
    from tfx_pipeline.demo import run_demo

    return run_demo(_load(args), user=args.user, k=args.k, port=args.port, rest_port=args.rest_port,
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

    rb = sub.add_parser("rollback", help="move the newest pushed version of a model aside")
    _add_config(rb)
    rb.add_argument("--model", required=True)

    args = parser.parse_args(argv)
    handler = {
        "demo": cmd_demo,
        "data": cmd_data_fetch,
        "schema": cmd_schema_infer,
        "rollback": cmd_rollback,
    }.get(args.command)
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
