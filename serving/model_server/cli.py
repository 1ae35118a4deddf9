"""Command line for the model server, with TF Serving's flag names.

    python -m serving.model_server --model_config_file serving/models.config \
        --port 8500 --rest_api_port 8501 --monitoring_port 8502

Also `recsys serve ...` (the project CLI calls `main`). Stops cleanly on
SIGINT/SIGTERM: in-flight requests finish, then models are unloaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models.config")


def _port(value: str) -> int | None:
    """A port number; 0 picks a free port, -1 or 'none' disables the endpoint."""
    if value.lower() in ("none", "off", "-1"):
        return None
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (flag names follow tensorflow_model_server)."""
    p = argparse.ArgumentParser(
        prog="recsys serve",
        description="Serve SavedModels over TensorFlow Serving's gRPC and REST APIs.",
    )
    p.add_argument("--model_config_file", "--model-config", dest="model_config_file",
                   help=f"text-format ModelServerConfig (default: {DEFAULT_CONFIG} unless --model_base_path is given)")
    p.add_argument("--model_name", default="default", help="model name with --model_base_path (default: default)")
    p.add_argument("--model_base_path", help="serve this one base path instead of a config file")
    p.add_argument("--port", "--grpc-port", dest="port", type=_port, default=8500,
                   help="gRPC port (default 8500; 0 = any free port)")
    p.add_argument("--rest_api_port", "--rest-port", dest="rest_api_port", type=_port, default=8501,
                   help="REST port (default 8501; 0 = any free port; none = off)")
    p.add_argument("--monitoring_port", "--metrics-port", dest="monitoring_port", type=_port, default=8502,
                   help="Prometheus /metrics port (default 8502; none = off)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=2.0,
                   help="seconds between polls for new versions (default 2)")
    p.add_argument("--enable_batching", action="store_true", help="batch concurrent Predict calls")
    p.add_argument("--batching_parameters_file",
                   help="TF Serving BatchingParameters text file (max_batch_size { value: 32 } ...)")
    p.add_argument("--max_message_size_mb", type=int, default=64, help="gRPC/REST message limit in MiB (default 64)")
    p.add_argument("--grpc_max_threads", type=int, default=16, help="gRPC handler threads (default 16)")
    p.add_argument("--log_level", default="INFO", help="Python logging level (default INFO)")

    logs = p.add_argument_group("request logging (models with a logging_config in the model config are logged regardless)")
    logs.add_argument("--request_log_dir", metavar="DIR",
                      help="log Predict calls of every model without a logging_config to DIR/<model>-*.tfrecord")
    logs.add_argument("--request_log_sampling_rate", metavar="RATE", type=float, default=None,
                      help="fraction of those calls to log, 0..1 (default 1 with --request_log_dir)")
    logs.add_argument("--request_log_max_file_mb", metavar="MB", type=float, default=64,
                      help="close a log file at this size (default 64)")
    logs.add_argument("--request_log_max_file_records", metavar="N", type=int, default=100_000,
                      help="close a log file at this many records (default 100000)")
    logs.add_argument("--request_log_max_file_age_s", metavar="SECONDS", type=float, default=600,
                      help="close a log file this many seconds after it was opened (default 600)")
    logs.add_argument("--request_log_queue_size", metavar="N", type=int, default=10_000,
                      help="records waiting for the writer; beyond, records are dropped and counted (default 10000)")

    security = p.add_argument_group("security (off by default)")
    security.add_argument("--ssl_cert_file", metavar="PEM", help="PEM server certificate chain: serve gRPC and REST over TLS only")
    security.add_argument("--ssl_key_file", metavar="PEM", help="PEM private key of --ssl_cert_file (unencrypted)")
    security.add_argument("--ssl_client_ca_file", metavar="PEM",
                          help="PEM CA certificates: clients must present a certificate signed by one (mutual TLS)")
    security.add_argument("--auth_token_file", metavar="FILE",
                          help="file holding a shared token; calls must send 'authorization: Bearer <token>' "
                               "(GET /healthz stays open)")
    return p


def _request_logging(args):
    """RequestLoggingOptions from the flags."""
    from serving.model_server.config import ConfigError, RequestLoggingOptions

    if args.request_log_sampling_rate is not None and not args.request_log_dir:
        raise ConfigError("--request_log_sampling_rate needs --request_log_dir (per-model rates go in logging_config)")
    if not args.request_log_max_file_mb > 0:
        raise ConfigError(f"--request_log_max_file_mb must be > 0, got {args.request_log_max_file_mb}")
    return RequestLoggingOptions(
        default_dir=args.request_log_dir,
        default_sampling_rate=1.0 if args.request_log_sampling_rate is None else args.request_log_sampling_rate,
        max_file_bytes=max(1, round(args.request_log_max_file_mb * 1024 * 1024)),
        max_file_records=args.request_log_max_file_records,
        max_file_age_s=args.request_log_max_file_age_s,
        queue_size=args.request_log_queue_size,
    )


def _tls(args):
    """TlsOptions from the flags, or None."""
    from serving.model_server.config import ConfigError
    from serving.model_server.tls import TlsOptions

    if not (args.ssl_cert_file or args.ssl_key_file or args.ssl_client_ca_file):
        return None
    if not (args.ssl_cert_file and args.ssl_key_file):
        raise ConfigError("TLS needs both --ssl_cert_file and --ssl_key_file")
    return TlsOptions(args.ssl_cert_file, args.ssl_key_file, args.ssl_client_ca_file)


def main(argv: list[str] | None = None) -> int:
    """Runs the server until SIGINT/SIGTERM; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here so --help and flag errors answer without loading TensorFlow.
    from serving.model_server.auth import read_token_file
    from serving.model_server.config import (
        BatchingOptions, ConfigError, load_batching_parameters, load_model_server_config, single_model_config)
    from serving.model_server.server import ModelServer

    try:
        if args.model_base_path and args.model_config_file:
            raise ConfigError("pass either --model_config_file or --model_base_path, not both")
        if args.model_base_path:
            config = single_model_config(args.model_name, args.model_base_path)
        else:
            config = load_model_server_config(args.model_config_file or DEFAULT_CONFIG)
        batching = None
        if args.batching_parameters_file:
            batching = load_batching_parameters(args.batching_parameters_file)
            if not args.enable_batching:
                print("note: --batching_parameters_file given without --enable_batching; batching stays off",
                      file=sys.stderr)
                batching = None
        elif args.enable_batching:
            batching = BatchingOptions()
        if args.max_message_size_mb <= 0:
            raise ConfigError("--max_message_size_mb must be > 0")
        request_logging = _request_logging(args)
        tls = _tls(args)
        token = read_token_file(args.auth_token_file) if args.auth_token_file else None
        if token and not tls and args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: --auth_token_file without TLS on {args.host}: tokens cross the network in plaintext; "
                  "add --ssl_cert_file/--ssl_key_file", file=sys.stderr)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def on_event(event: str, model: str, version: int, detail: str) -> None:
        if event == "loaded":
            print(f"loaded model {model} version {version} from {detail}", flush=True)
        elif event == "failed":
            print(f"FAILED model {model} version {version}: {detail}", flush=True)
        else:
            print(f"unloaded model {model} version {version}", flush=True)

    try:
        server = ModelServer(
            config, grpc_port=args.port, rest_port=args.rest_api_port, metrics_port=args.monitoring_port,
            host=args.host, poll_interval_s=args.file_system_poll_wait_seconds, batching=batching,
            max_message_size_bytes=args.max_message_size_mb * 1024 * 1024,
            grpc_max_workers=args.grpc_max_threads, on_version_event=on_event,
            request_logging=request_logging, tls=tls, auth_token=token,
        )
    except ConfigError as e:  # e.g. a request log directory that cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        models = ", ".join(f"{m.name} <- {m.base_path}" for m in config.model_config_list.config)
        print(f"serving models: {models}", flush=True)
        if server.grpc_port is not None:
            print(f"gRPC listening on {server.grpc_address}{' (TLS)' if tls else ''}", flush=True)
        if server.rest_port is not None:
            print(f"REST listening on {server.rest_url}", flush=True)
        if server.metrics_port is not None:
            print(f"metrics listening on http://{args.host}:{server.metrics_port}/metrics", flush=True)
        if batching:
            print(f"batching on: {batching}", flush=True)
        if token:
            print("bearer token required on gRPC and REST (GET /healthz open)", flush=True)
        for name, (prefix, rate) in server.request_logger.targets().items():
            print(f"request logging: model {name}, sampling rate {rate:g} -> {prefix}-*.tfrecord", flush=True)
        while not stop.wait(0.5):
            pass
        print("shutting down", flush=True)
        return 0
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
