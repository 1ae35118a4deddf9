"""Optional TLS for the gRPC and REST endpoints (--ssl_cert_file / --ssl_key_file).

TF Serving takes an SSLConfig text proto with the PEM contents inline
(--ssl_config_file); that proto is not in the tensorflow-serving-api pip
package and Python's ssl module loads keys only from files, so this server
takes PEM files instead. `client_ca_file` plays the part of SSLConfig's
custom_ca + client_verify: clients must then present a certificate it signed
(mutual TLS). Everything is loaded and checked when the options are created,
so a wrong path or a key that does not match the certificate fails at startup.
"""

from __future__ import annotations

import dataclasses
import os
import ssl

import grpc

from serving.model_server.config import ConfigError


@dataclasses.dataclass(frozen=True)
class TlsOptions:
    """PEM files for serving TLS.

    Attributes:
        cert_file: the server certificate chain (leaf first).
        key_file: its private key, unencrypted.
        client_ca_file: CA certificates for verifying client certificates;
            None: clients are not asked for one.
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def __post_init__(self):
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"TLS {name} {path!r} does not exist or is not a file")
        self.ssl_context()  # parses everything now

    def _read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ConfigError(f"cannot read TLS file {path!r}: {e}") from e

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side SSLContext (TLS 1.2+) for the REST endpoint."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert_file, self.key_file, password=_no_password)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"cannot load TLS certificate {self.cert_file!r} with key {self.key_file!r} "
                              f"(PEM files, key matching the certificate): {e}") from e
        if self.client_ca_file:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, OSError) as e:
                raise ConfigError(f"cannot load TLS client CA file {self.client_ca_file!r}: {e}") from e
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials for grpc.Server.add_secure_port."""
        ca = self._read(self.client_ca_file) if self.client_ca_file else None
        return grpc.ssl_server_credentials([(self._read(self.key_file), self._read(self.cert_file))],
                                           root_certificates=ca, require_client_auth=ca is not None)


def _no_password() -> bytes:
    raise ConfigError("the TLS private key is encrypted; give the server an unencrypted key file (chmod 600)")
