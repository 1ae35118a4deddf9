"""TF Serving config protos the tensorflow-serving-api pip package does not ship.

`SSLConfig` (--ssl_config_file) and `MonitoringConfig` (--monitoring_config_file)
are defined here from TF Serving's .proto files (tensorflow_serving/config/
ssl_config.proto, monitoring_config.proto: same package, names and field
numbers), so their text format is parsed by protobuf's own text_format parser,
exactly as tensorflow_model_server reads them.
"""

from __future__ import annotations

import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from serving.model_server.config import ConfigError

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


def _build():
    f = descriptor_pb2.FileDescriptorProto(name="recsys/tf_serving_missing_configs.proto",
                                           package="tensorflow.serving", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    ssl = f.message_type.add(name="SSLConfig")
    for number, (name, kind) in enumerate([("server_key", T.TYPE_STRING), ("server_cert", T.TYPE_STRING),
                                           ("custom_ca", T.TYPE_STRING), ("client_verify", T.TYPE_BOOL)], 1):
        ssl.field.add(name=name, number=number, type=kind, label=T.LABEL_OPTIONAL)
    prometheus = f.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=T.TYPE_BOOL, label=T.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    monitoring = f.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig")),
            get(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")))


SSLConfig, MonitoringConfig = _build()


def _parse_file(path: str, message_class, flag: str):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {flag} {path!r}: {e}") from e
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ConfigError(f"{flag} {path!r}: not a valid text-format {message_class.DESCRIPTOR.name}: {e}") from e
    return message


def load_monitoring_path(path: str) -> str | None:
    """The Prometheus path a MonitoringConfig file turns on (None: prometheus_config not enabled)."""
    config = _parse_file(path, MonitoringConfig, "--monitoring_config_file")
    if not config.prometheus_config.enable:
        return None
    metrics_path = config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
    if not metrics_path.startswith("/"):
        raise ConfigError(f"--monitoring_config_file {path!r}: prometheus_config.path must start with '/', "
                          f"got {metrics_path!r}")
    return metrics_path


def load_ssl_config(path: str, directory: str):
    """Reads an SSLConfig file and writes its PEM strings to files in `directory` (0600).

    Returns:
        (cert_file, key_file, client_ca_file or None) for tls.TlsOptions; the CA
        is a client-verification CA only when client_verify is true (TF Serving's rule).
    """
    config = _parse_file(path, SSLConfig, "--ssl_config_file")
    if not config.server_cert or not config.server_key:
        raise ConfigError(f"--ssl_config_file {path!r}: server_cert and server_key are required")
    if config.client_verify and not config.custom_ca:
        raise ConfigError(f"--ssl_config_file {path!r}: client_verify needs custom_ca")

    def write(name: str, text: str) -> str:
        out = os.path.join(directory, name)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return out

    cert, key = write("server.crt", config.server_cert), write("server.key", config.server_key)
    ca = write("client_ca.crt", config.custom_ca) if config.client_verify else None
    return cert, key, ca
