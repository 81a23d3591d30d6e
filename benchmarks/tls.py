"""TLS material and tokens for benchmarks run with ``--tls``: a CA made for the run, a server
certificate for 127.0.0.1 / localhost signed by it, and a tokens file (``cryptography``, from the
dev extra)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

ADMIN_TOKEN = "bench-admin-token"
DECIDE_TOKEN = "bench-decide-token"


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    tokens: Path

    def metadata(self, token: str = DECIDE_TOKEN) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)


def make_tls(directory: Path) -> TlsFiles:
    """Write a CA, a server certificate + key (ECDSA P-256) and a tokens file (an admin and
    a decide token) into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "banditd-bench-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - day).not_valid_after(now + day)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - day).not_valid_after(now + day)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                     directory / "tokens")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.tokens.write_text("".join(
        f"{hashlib.sha256(token.encode()).hexdigest()} {role} bench-{role}\n"
        for token, role in ((ADMIN_TOKEN, "admin"), (DECIDE_TOKEN, "decide"))))
    return files
