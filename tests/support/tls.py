"""Self-signed certificates for the TLS tests, made with `cryptography`."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclasses.dataclass(frozen=True)
class CertFiles:
    cert: str  # PEM certificate (self-signed: also its own CA file)
    key: str  # PEM private key, unencrypted

    def read_cert(self) -> bytes:
        with open(self.cert, "rb") as f:
            return f.read()

    def read_key(self) -> bytes:
        with open(self.key, "rb") as f:
            return f.read()


def make_self_signed(directory: str, name: str, password: bytes | None = None) -> CertFiles:
    """A self-signed certificate for localhost / 127.0.0.1 (valid 1 day) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(directory, exist_ok=True)
    files = CertFiles(os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key"))
    with open(files.cert, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    with open(files.key, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    os.chmod(files.key, 0o600)
    return files
