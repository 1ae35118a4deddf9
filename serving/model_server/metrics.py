"""Prometheus metrics of the model server, on their own registry and port.

Each ModelServer has its own CollectorRegistry so that several servers in one
process (tests, infra validation next to a running server) do not collide.
Model label values are limited to configured model names: anything else is
reported as "<unknown>", so clients sending random names cannot blow up the
number of time series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "recsys_model_server"
UNKNOWN_MODEL = "<unknown>"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


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
        self._http = None

    def observe_request(self, api: str, model: str, signature: str, status: str, seconds: float) -> None:
        """Records one finished request."""
        self.requests.labels(api, model, signature, status).inc()
        self.latency.labels(api, model, signature).observe(seconds)
        if status != "OK":
            self.errors.labels(api, model, status).inc()

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
