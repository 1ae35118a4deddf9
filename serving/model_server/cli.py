"""Command line for the model server, with TF Serving's flag names.

    python -m serving.model_server --model_config_file serving/models.config \
        --port 8500 --rest_api_port 8501 --monitoring_port 8502

Also `recsys serve ...` (the project CLI calls `main`). Stops cleanly on
SIGINT/SIGTERM: in-flight requests finish, then models are unloaded.

`--num_workers N` (N > 1, or 0 = one per CPU core) runs N such server processes
on the same ports under a supervisor (supervisor.py); each worker is this same
command with the hidden `--worker_index i` / `--worker_control_fd FD` flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading

log = logging.getLogger(__name__)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models.config")
# serving/models.config names base paths under /models, TF Serving's docker mount point;
# --serving_root points them at a local directory instead.
SERVING_MOUNT = "/models"
DEFAULT_SERVING_ROOT = os.path.join("runs", "movielens_100k", "serving")


def _port(value: str) -> int | None:
    """A port number; 0 picks a free port, -1 or 'none' disables the endpoint."""
    if value.lower() in ("none", "off", "-1"):
        return None
    if value.lower() == "auto":
        return 0
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {port}")
    return port


def _rest_port(value: str) -> int | None:
    """TF Serving's --rest_api_port: 0 (its default) turns REST off; 'auto' picks a free port."""
    if value.strip() == "0":
        return None
    return _port(value)


def _num_workers(value: str) -> int:
    """--num_workers: N >= 1 processes, or 0 for one per CPU core."""
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = one per CPU core), got {n}")
    return n


def _bool(value: str) -> bool:
    """gflags booleans: --flag, --flag=true/false/1/0."""
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "t"):
        return True
    if lowered in ("false", "0", "no", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


# tensorflow_model_server flags accepted so its command lines work, with why each changes nothing here.
ACCEPTED_TF_SERVING_FLAGS = {
    "grpc_socket_path": "no UNIX-socket gRPC endpoint; use --port",
    "rest_api_enable_cors_support": "no CORS headers are sent",
    "enable_per_model_batching_parameters": "batching parameters are server-wide",
    "num_load_threads": "versions load one at a time",
    "num_unload_threads": "versions unload one at a time",
    "max_num_load_retries": "a failed version is retried when its directory changes",
    "load_retry_interval_micros": "a failed version is retried when its directory changes",
    "flush_filesystem_caches": "local file system only; nothing to flush",
    "tensorflow_session_parallelism": "deprecated in TF Serving; use --tensorflow_intra_op_parallelism",
    "tensorflow_session_config_file": "SavedModels run as TF2 functions; no session config",
    "use_alts_credentials": "ALTS is not supported; use --ssl_config_file or --ssl_cert_file",
    "platform_config_file": "only the tensorflow platform is served",
    "per_process_gpu_memory_fraction": "TensorFlow's default GPU memory growth applies",
    "saved_model_tags": "the serve tag is loaded",
    "grpc_channel_arguments": "use --max_message_size_mb and --grpc_max_threads",
    "num_request_iterations_for_warmup": "each warmup record runs once",
    "remove_unused_fields_from_bundle_metagraph": "a memory optimisation of the C++ server",
    "prefer_tflite_model": "TFLite models are not served",
    "num_tflite_pools": "TFLite models are not served",
    "num_tflite_interpreters_per_pool": "TFLite models are not served",
    "enable_signature_method_name_check": "Classify/Regress check signatures as TF Serving does with it off",
    "xla_cpu_compilation_enabled": "XLA JIT stays off (TF Serving's default)",
    "xla_gpu_compilation_enabled": "XLA JIT stays off (TF Serving's default)",
    "enable_profiler": "no profiler service",
    "thread_pool_factory_config_file": "requests run on the gRPC/REST handler threads",
    "mixed_precision": "models run in the precision they were exported in",
    "skip_initialize_tpu": "no TPU support",
    "enable_grpc_healthcheck_service": "no grpc.health.v1 service; use GET /healthz or GetModelStatus",
    "enable_serialization_as_tensor_content": "outputs use the typed fields, as TF Serving's default",
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (flag names follow tensorflow_model_server)."""
    p = argparse.ArgumentParser(
        prog="recsys serve",
        description="Serve SavedModels over TensorFlow Serving's gRPC and REST APIs.",
    )
    p.add_argument("--model_config_file", "--model-config", dest="model_config_file",
                   help=f"text-format ModelServerConfig (default: {DEFAULT_CONFIG} unless --model_base_path is given)")
    p.add_argument("--serving_root", metavar="DIR", default=None,
                   help=f"read base paths under {SERVING_MOUNT}/ in the model config from DIR (default "
                        f"{DEFAULT_SERVING_ROOT} for serving/models.config, else off)")
    p.add_argument("--model_name", default="default", help="model name with --model_base_path (default: default)")
    p.add_argument("--model_base_path", help="serve this one base path instead of a config file")
    p.add_argument("--port", "--grpc-port", dest="port", type=_port, default=8500,
                   help="gRPC port (default 8500; 0 = any free port)")
    p.add_argument("--rest_api_port", "--rest-port", dest="rest_api_port", type=_rest_port, default=None,
                   help="REST port (default off; 0 = off, as in TF Serving; auto = any free port)")
    p.add_argument("--rest_api_timeout_in_ms", metavar="MS", type=int, default=30000,
                   help="REST read/idle timeout and request deadline (default 30000; 0 = none)")
    p.add_argument("--rest_api_num_threads", metavar="N", type=int, default=None,
                   help="REST connections served at once, each on its own thread (default max(64, 4 x CPUs))")
    p.add_argument("--monitoring_config_file", metavar="FILE",
                   help="TF Serving MonitoringConfig: prometheus_config { enable: true path: ... } serves "
                        f"metrics on the REST port (default path {'/monitoring/prometheus/metrics'})")
    p.add_argument("--monitoring_port", "--metrics-port", dest="monitoring_port", type=_port, default=8502,
                   help="Prometheus /metrics port (default 8502; none = off)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=2.0,
                   help="seconds between polls for new versions (default 2; 0 = at startup only)")
    p.add_argument("--model_config_file_poll_wait_seconds", metavar="SECONDS", type=float, default=0,
                   help="re-read --model_config_file this often and apply changes (default 0 = never)")
    p.add_argument("--enable_batching", type=_bool, nargs="?", const=True, default=False,
                   help="batch concurrent Predict calls")
    p.add_argument("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True,
                   help="replay assets.extra warmup requests before serving a version (always on here)")
    p.add_argument("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True,
                   default=False, help="let a config reload point a new label at a version not yet available")
    p.add_argument("--tensorflow_intra_op_parallelism", metavar="N", type=int, default=0,
                   help="threads within one TensorFlow op (default 0 = TensorFlow's choice)")
    p.add_argument("--tensorflow_inter_op_parallelism", metavar="N", type=int, default=0,
                   help="TensorFlow ops run in parallel (default 0 = TensorFlow's choice)")
    p.add_argument("--batching_parameters_file",
                   help="TF Serving BatchingParameters text file (max_batch_size { value: 32 } ...)")
    p.add_argument("--max_message_size_mb", type=int, default=64, help="gRPC/REST message limit in MiB (default 64)")
    limits = p.add_argument_group("request limits (checked before any work; 0 = no limit)")
    limits.add_argument("--max_request_rows", metavar="N", type=int, default=4096,
                        help="most rows (dim 0) per Predict request (default 4096)")
    limits.add_argument("--max_request_elements", metavar="N", type=int, default=4 * 1024 * 1024,
                        help="most input elements per request, all inputs together (default 4194304)")
    limits.add_argument("--max_response_size_mb", metavar="MB", type=float, default=64,
                        help="most output bytes per response, as a PredictResponse encodes them (default 64)")
    p.add_argument("--grpc_max_threads", type=int, default=16, help="gRPC handler threads (default 16)")
    p.add_argument("--num_workers", metavar="N", type=_num_workers, default=1,
                   help="server processes sharing the gRPC and REST ports, each with its own models (default 1 "
                        "= this process serves; 0 = one per CPU core); N > 1: a supervisor starts, watches and "
                        "restarts N workers, worker i serves metrics on --monitoring_port + i (README)")
    p.add_argument("--worker_index", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument("--worker_control_fd", type=int, default=None, help=argparse.SUPPRESS)  # its socketpair
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
    security.add_argument("--ssl_config_file", metavar="FILE",
                          help="TF Serving SSLConfig (server_key, server_cert, custom_ca, client_verify): "
                               "gRPC and REST over TLS")
    security.add_argument("--ssl_cert_file", metavar="PEM", help="PEM server certificate chain: serve gRPC and REST over TLS only")
    security.add_argument("--ssl_key_file", metavar="PEM", help="PEM private key of --ssl_cert_file (unencrypted)")
    security.add_argument("--ssl_client_ca_file", metavar="PEM",
                          help="PEM CA certificates: clients must present a certificate signed by one (mutual TLS)")
    security.add_argument("--auth_token_file", metavar="FILE",
                          help="file holding a shared token; calls must send 'authorization: Bearer <token>' "
                               "(GET /healthz stays open)")
    security.add_argument("--admin_token_file", metavar="FILE",
                          help="file holding the token HandleReloadConfigRequest needs; without it reloads "
                               "are refused unless --host is loopback")
    logs.add_argument("--request_log_allowed_dirs", metavar="DIR[,DIR...]",
                      help="directories request logs may be written under; a config reload naming another "
                           "prefix is refused (default: the startup config's log directories)")

    tf_serving = p.add_argument_group("other tensorflow_model_server flags (accepted; see README for why each "
                                      "changes nothing here)")
    for flag in ACCEPTED_TF_SERVING_FLAGS:
        tf_serving.add_argument(f"--{flag}", metavar="VALUE", nargs="?", const="true", default=None,
                                help=argparse.SUPPRESS)
    return p


def _request_logging(args):
    """RequestLoggingOptions from the flags."""
    from serving.model_server.config import ConfigError, RequestLoggingOptions

    if args.request_log_sampling_rate is not None and not args.request_log_dir:
        raise ConfigError("--request_log_sampling_rate needs --request_log_dir (per-model rates go in logging_config)")
    if not args.request_log_max_file_mb > 0:
        raise ConfigError(f"--request_log_max_file_mb must be > 0, got {args.request_log_max_file_mb}")
    allowed = None
    if args.request_log_allowed_dirs:
        allowed = tuple(d for d in args.request_log_allowed_dirs.split(",") if d)
    return RequestLoggingOptions(
        allowed_dirs=allowed,
        default_dir=args.request_log_dir,
        default_sampling_rate=1.0 if args.request_log_sampling_rate is None else args.request_log_sampling_rate,
        max_file_bytes=max(1, round(args.request_log_max_file_mb * 1024 * 1024)),
        max_file_records=args.request_log_max_file_records,
        max_file_age_s=args.request_log_max_file_age_s,
        queue_size=args.request_log_queue_size,
    )


def _limits(args):
    """RequestLimits from the flags (0 turns a limit off)."""
    from serving.model_server.config import ConfigError
    from serving.model_server.limits import RequestLimits

    for flag in ("max_request_rows", "max_request_elements", "max_response_size_mb"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag} must be >= 0 (0 = no limit), got {getattr(args, flag)}")
    return RequestLimits(
        max_rows=args.max_request_rows or None,
        max_elements=args.max_request_elements or None,
        max_response_bytes=max(1, round(args.max_response_size_mb * 2**20)) if args.max_response_size_mb else None,
    )


def _tls(args, scratch_dir):
    """TlsOptions from the flags, or None."""
    from serving.model_server.config import ConfigError
    from serving.model_server.tls import TlsOptions

    if args.ssl_config_file:
        if args.ssl_cert_file or args.ssl_key_file or args.ssl_client_ca_file:
            raise ConfigError("pass either --ssl_config_file or --ssl_cert_file/--ssl_key_file, not both")
        from serving.model_server.tf_serving_protos import load_ssl_config

        return TlsOptions(*load_ssl_config(args.ssl_config_file, scratch_dir()))
    if not (args.ssl_cert_file or args.ssl_key_file or args.ssl_client_ca_file):
        return None
    if not (args.ssl_cert_file and args.ssl_key_file):
        raise ConfigError("TLS needs both --ssl_cert_file and --ssl_key_file")
    return TlsOptions(args.ssl_cert_file, args.ssl_key_file, args.ssl_client_ca_file)


def _set_tf_threads(args) -> None:
    import tensorflow as tf

    if args.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)


def _note_accepted_flags(args) -> None:
    """One line per accepted tensorflow_model_server flag that changes nothing here."""
    for flag, reason in ACCEPTED_TF_SERVING_FLAGS.items():
        if getattr(args, flag) is not None:
            log.info("--%s=%s accepted and ignored: %s", flag, getattr(args, flag), reason)
    if not args.enable_model_warmup:
        log.info("--enable_model_warmup=false ignored: warmup requests always run before a version serves")


def load_config(args):
    """The ModelServerConfig the flags name (--serving_root applied; see SERVING_MOUNT)."""
    from serving.model_server.config import ConfigError, load_model_server_config, single_model_config
    from serving.model_server.reload import tf_serving_refusal

    if args.model_base_path and args.model_config_file:
        raise ConfigError("pass either --model_config_file or --model_base_path, not both")
    if args.model_base_path:
        return single_model_config(args.model_name, args.model_base_path)
    path = args.model_config_file or DEFAULT_CONFIG
    root = args.serving_root
    if root is None and _is_builtin_config(args.model_config_file):
        root = DEFAULT_SERVING_ROOT
    if root:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        from serving.model_server.config import parse_model_server_config

        config = parse_model_server_config(_rebase(text, root), path)
    else:
        config = load_model_server_config(path)
    raw = load_raw_config(path)
    refusal = tf_serving_refusal(raw)
    if refusal is not None:
        log.warning("%s: tensorflow_model_server would refuse this file (%s); this server accepts it at startup, "
                    "config reloads must fix it", path, refusal)
    return config


def load_raw_config(path: str):
    """The config file as written (base paths not resolved)."""
    from google.protobuf import text_format

    from serving.model_server.config import ModelServerConfig

    config = ModelServerConfig()
    with open(path, encoding="utf-8") as f:
        text_format.Parse(f.read(), config)
    return config


def _is_builtin_config(path: str | None) -> bool:
    """True for no --model_config_file or one naming serving/models.config itself."""
    if not path:
        return True
    try:
        return os.path.samefile(path, DEFAULT_CONFIG)
    except OSError:
        return False


def _rebase(text: str, root: str) -> str:
    """Points base paths under SERVING_MOUNT (TF Serving's docker mount point) at `root`."""
    root = os.path.abspath(root).replace("\\", "/")
    return text.replace(f'"{SERVING_MOUNT}/', f'"{root}/')


def main(argv: list[str] | None = None) -> int:
    """Runs the server until SIGINT/SIGTERM; returns the exit code."""
    args = build_parser().parse_args(argv)
    worker = args.worker_index  # None: a standalone server (or the supervisor below)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s " + ("" if worker is None else f"[worker {worker}] ")
                               + "%(name)s: %(message)s")
    if worker is None:
        from serving.model_server.supervisor import resolve_num_workers, supervise

        num_workers = resolve_num_workers(args.num_workers)
        if num_workers > 1:  # the multi-process mode: this process only supervises (supervisor.py)
            return supervise(args, sys.argv[1:] if argv is None else list(argv), num_workers)
        return _serve(args)
    return _serve(args, _WorkerChannel(worker, args.worker_control_fd))


class _WorkerChannel:
    """A worker's end of the supervisor's socketpair: reports ready; SIGTERMs itself when the supervisor is gone."""

    def __init__(self, index: int, fd: int | None):
        import socket

        self.index = index
        self.prefix = f"worker {index}: "
        self._sock = socket.socket(fileno=fd) if fd is not None else None
        if self._sock is not None:
            threading.Thread(target=self._watch, name="supervisor-watch", daemon=True).start()

    def _watch(self) -> None:
        try:
            while self._sock.recv(64):
                pass
        except OSError:
            pass
        log.warning("the supervisor is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    def ready(self, server, lines: list[str]) -> None:
        import json

        message = {"event": "ready", "pid": os.getpid(), "grpc_port": server.grpc_port,
                   "rest_port": server.rest_port, "metrics_port": server.metrics_port, "lines": lines}
        print(f"{self.prefix}ready (pid {os.getpid()})", flush=True)
        if self._sock is not None:
            try:
                self._sock.sendall(json.dumps(message).encode() + b"\n")
            except OSError as e:  # the supervisor is gone: _watch stops this worker
                log.warning("cannot report ready to the supervisor: %s", e)


def _serve(args, worker: _WorkerChannel | None = None) -> int:
    """One server process: standalone (worker None), or worker `worker.index` of a multi-process server."""
    say_prefix = "" if worker is None else worker.prefix
    # Imported here so --help and flag errors answer without loading TensorFlow.
    from serving.model_server.auth import read_token_file
    from serving.model_server.config import BatchingOptions, ConfigError, load_batching_parameters
    from serving.model_server.reload import ConfigFilePoller
    from serving.model_server.server import ModelServer
    from serving.model_server.tf_serving_protos import load_monitoring_path

    scratch = []

    def scratch_dir() -> str:
        if not scratch:
            scratch.append(tempfile.TemporaryDirectory(prefix="recsys-serve-"))
        return scratch[0].name

    try:
        _note_accepted_flags(args)
        _set_tf_threads(args)
        config = load_config(args)
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
        if args.rest_api_timeout_in_ms < 0:
            raise ConfigError("--rest_api_timeout_in_ms must be >= 0 (0 = no timeout)")
        if args.rest_api_num_threads is not None and args.rest_api_num_threads < 1:
            raise ConfigError("--rest_api_num_threads must be >= 1")
        if args.model_config_file_poll_wait_seconds < 0:
            raise ConfigError("--model_config_file_poll_wait_seconds must be >= 0 (0 = never)")
        if args.model_config_file_poll_wait_seconds and not args.model_config_file:
            raise ConfigError("--model_config_file_poll_wait_seconds needs --model_config_file")
        metrics_path = load_monitoring_path(args.monitoring_config_file) if args.monitoring_config_file else None
        if metrics_path and args.rest_api_port is None:
            print("note: --monitoring_config_file serves metrics on the REST port, which is off "
                  "(--rest_api_port); use --monitoring_port for a metrics-only port", file=sys.stderr)
        request_logging = _request_logging(args)
        limits = _limits(args)
        tls = _tls(args, scratch_dir)
        token = read_token_file(args.auth_token_file) if args.auth_token_file else None
        admin_token = read_token_file(args.admin_token_file) if args.admin_token_file else None
        if token and admin_token and token == admin_token:
            raise ConfigError("--admin_token_file holds the same token as --auth_token_file; use a separate one")
        if token and not tls and args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: --auth_token_file without TLS on {args.host}: tokens cross the network in plaintext; "
                  "add --ssl_cert_file/--ssl_key_file", file=sys.stderr)
        # TF Serving: 0 polls once at startup; negative never polls (here: once, then never).
        poll_s = args.file_system_poll_wait_seconds if args.file_system_poll_wait_seconds > 0 else 10 ** 9
        rest_threads = args.rest_api_num_threads or max(64, 4 * (os.cpu_count() or 1))
    except (ConfigError, ValueError, OSError) as e:
        print(f"{say_prefix}error: {e}", file=sys.stderr)
        return 2

    def on_event(event: str, model: str, version: int, detail: str) -> None:
        if event == "loaded":
            print(f"{say_prefix}loaded model {model} version {version} from {detail}", flush=True)
        elif event == "failed":
            print(f"{say_prefix}FAILED model {model} version {version}: {detail}", flush=True)
        else:
            print(f"{say_prefix}unloaded model {model} version {version}", flush=True)

    try:
        server = ModelServer(
            config, grpc_port=args.port, rest_port=args.rest_api_port, metrics_port=args.monitoring_port,
            host=args.host, poll_interval_s=poll_s, batching=batching,
            max_message_size_bytes=args.max_message_size_mb * 1024 * 1024,
            grpc_max_workers=args.grpc_max_threads, on_version_event=on_event,
            request_logging=request_logging, tls=tls, auth_token=token, limits=limits,
            admin_token=admin_token, rest_timeout_s=(args.rest_api_timeout_in_ms / 1000) or None,
            rest_max_connections=rest_threads, metrics_path=metrics_path,
            allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
            worker_index=None if worker is None else worker.index,
        )
    except ConfigError as e:  # e.g. a request log directory that cannot be written
        print(f"{say_prefix}error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    poller = None
    try:
        try:
            server.start()
        except OSError as e:
            print(f"{say_prefix}error: {e}", file=sys.stderr)
            return 1
        if args.model_config_file_poll_wait_seconds:
            poller = ConfigFilePoller(args.model_config_file, server.reloader,
                                      args.model_config_file_poll_wait_seconds).start()
        lines = _banner(args, config, server, tls, metrics_path, batching, token, admin_token)
        if worker is None:
            for line in lines:
                print(line, flush=True)
        else:  # the supervisor prints them once every worker is ready
            worker.ready(server, lines)
        while not stop.wait(0.5):
            pass
        print(f"{say_prefix}shutting down", flush=True)
        return 0
    finally:
        if poller is not None:
            poller.stop()
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        for d in scratch:
            d.cleanup()


def _banner(args, config, server, tls, metrics_path, batching, token, admin_token) -> list[str]:
    """The lines a started server prints (tests and operators wait for "gRPC listening on ...")."""
    models = ", ".join(f"{m.name} <- {m.base_path}" for m in config.model_config_list.config)
    lines = [f"serving models: {models}"]
    if server.grpc_port is not None:
        lines.append(f"gRPC listening on {server.grpc_address}{' (TLS)' if tls else ''}")
    if server.rest_port is not None:
        lines.append(f"REST listening on {server.rest_url}")
        if metrics_path:
            lines.append(f"metrics on {server.rest_url}{metrics_path}")
    if server.metrics_port is not None:
        lines.append(f"metrics listening on http://{args.host}:{server.metrics_port}/metrics")
    if batching:
        lines.append(f"batching on: {batching}")
    if token:
        lines.append("bearer token required on gRPC and REST (GET /healthz open)")
    if admin_token:
        lines.append("admin token required for HandleReloadConfigRequest")
    for name, (prefix, rate) in server.request_logger.targets().items():
        lines.append(f"request logging: model {name}, sampling rate {rate:g} -> {prefix}-*.tfrecord")
    return lines


if __name__ == "__main__":
    sys.exit(main())
