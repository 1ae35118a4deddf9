"""Prometheus metrics of the model server, on their own registry and port.

Served on --monitoring_port at /metrics (the `recsys_model_server_*` families),
and on the REST port at the path of --monitoring_config_file (TF Serving's way:
its `:tensorflow:serving:request_count` / `request_latency`, then ours).

Each ModelServer has its own CollectorRegistry so that several servers in one
process (tests, infra validation next to a running server) do not collide.
Model label values are limited to configured model names: anything else is
reported as "<unknown>", so clients sending random names cannot blow up the
number of time series.
"""

from __future__ import annotations

import threading

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server

PREFIX = "recsys_model_server"
UNKNOWN_MODEL = "<unknown>"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# TF Serving's request_latency buckets: microseconds, Exponential(10, 1.8, 33) (servables/tensorflow/util.cc).
_TF_LATENCY_BOUNDS_US = tuple(10 * 1.8 ** i for i in range(33))
# REST calls are labelled with the URL verb in TF Serving (http_server.cc); status/metadata have none.
_REST_API_LABEL = {"rest_Predict": "predict", "rest_Classify": "classify", "rest_Regress": "regress"}


class TfServingMetrics:
    """TF Serving's own metric names, as its Prometheus exporter writes them.

    `:tensorflow:serving:request_count{model_name, status}` and
    `:tensorflow:serving:request_latency{model_name, API, entrypoint}` (a histogram
    in microseconds with TF Serving's buckets). Hand-written exposition because
    prometheus_client appends `_total` to counters, and TF Serving's names have none.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._latency: dict[tuple[str, str, str], list] = {}  # key -> [bucket counts..., sum, count]

    def observe(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        micros = seconds * 1e6
        with self._lock:
            self._counts[(model, status)] = self._counts.get((model, status), 0) + 1
            cell = self._latency.setdefault((model, api, entrypoint), [0] * (len(_TF_LATENCY_BOUNDS_US) + 3))
            for i, bound in enumerate(_TF_LATENCY_BOUNDS_US):
                if micros <= bound:
                    cell[i] += 1
                    break
            else:
                cell[len(_TF_LATENCY_BOUNDS_US)] += 1
            cell[-2] += micros
            cell[-1] += 1

    def render(self) -> str:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            counts = sorted(self._counts.items())
            latency = sorted((k, list(v)) for k, v in self._latency.items())
        for (model, status), n in counts:
            lines.append(f':tensorflow:serving:request_count{{model_name="{_escape(model)}",status="{status}"}} {n}')
        lines.append("# TYPE :tensorflow:serving:request_latency histogram")
        for (model, api, entrypoint), cell in latency:
            labels = f'model_name="{_escape(model)}",API="{_escape(api)}",entrypoint="{entrypoint}"'
            running = 0
            for bound, n in zip((*_TF_LATENCY_BOUNDS_US, float("inf")), cell):
                running += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{le}"}} {running}')
            lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} {cell[-2]:g}")
            lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} {cell[-1]}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServerMetrics:
    """The server's metric families.

    Attributes:
        registry: the CollectorRegistry all families live in.
        requests: requests by api, model, signature and final status code.
        latency: request latency in seconds by api, model and signature.
        errors: failed requests by api, model and status code.
        loaded_versions: versions currently serving, per model.
        model_loads: load attempts by model and outcome (success/failure).
        batch_size: rows per executed batch, per model (server-side batching).
        request_logs: Predict calls sampled for request logging, by model and
            outcome: logged, dropped (queue full) or failed (write error).
        auth_failures: requests refused for a missing or wrong bearer token, by
            endpoint (grpc, rest).
    """

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Requests handled.",
                                ["api", "model", "signature", "status"], registry=r)
        self.latency = Histogram(f"{PREFIX}_request_latency_seconds", "Request latency.",
                                 ["api", "model", "signature"], buckets=_LATENCY_BUCKETS, registry=r)
        self.errors = Counter(f"{PREFIX}_request_errors", "Requests that failed.",
                              ["api", "model", "status"], registry=r)
        self.loaded_versions = Gauge(f"{PREFIX}_loaded_versions", "Versions serving.", ["model"], registry=r)
        self.model_loads = Counter(f"{PREFIX}_model_loads", "Version load attempts.", ["model", "outcome"], registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Rows per executed batch.", ["model"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.request_logs = Counter(f"{PREFIX}_request_log_records", "Sampled Predict calls by logging outcome.",
                                    ["model", "outcome"], registry=r)
        self.auth_failures = Counter(f"{PREFIX}_auth_failures", "Requests refused for a missing or wrong token.",
                                     ["endpoint"], registry=r)
        self.tf_serving = TfServingMetrics()
        self._http = None

    def observe_request(self, api: str, model: str, signature: str, status: str, seconds: float) -> None:
        """Records one finished request (api: the gRPC method, or "rest_<method>" for REST)."""
        self.requests.labels(api, model, signature, status).inc()
        self.latency.labels(api, model, signature).observe(seconds)
        if status != "OK":
            self.errors.labels(api, model, status).inc()
        if api.startswith("rest_"):
            self.tf_serving.observe(model, _REST_API_LABEL.get(api, ""), "REST", status, seconds)
        else:
            self.tf_serving.observe(model, api, "GRPC", status, seconds)

    def exposition(self) -> tuple[str, bytes]:
        """(content type, text) of every metric: TF Serving's names, then recsys_model_server_*."""
        return CONTENT_TYPE_LATEST, self.tf_serving.render().encode() + generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
