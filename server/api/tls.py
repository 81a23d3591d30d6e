"""The gRPC port's TLS: certificate, key and (mutual TLS) client CAs from files, re-read on
SIGHUP without a restart.

gRPC asks :meth:`ServerCertificates._fetch` for a new configuration at every handshake; it
gets one only after :meth:`ServerCertificates.reload` read new files, so connections made
after a reload present the new certificate (and check clients against the new CAs), while open
connections keep theirs.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import grpc

from banditd.server.settings import Settings

log = logging.getLogger("banditd")


class TlsFilesError(ValueError):
    """A certificate, key or CA file that cannot be used (the message names it)."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"{what} {path}: {exc.strerror or exc}") from None


def _check(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Refuse files that would fail every handshake: a chain and key that do not parse or do
    not match, CAs that do not parse."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFilesError(f"tls_cert_file {cert} / tls_key_file {key}: not a PEM "
                            f"certificate chain and its private key ({exc})") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (ssl.SSLError, OSError) as exc:
            raise TlsFilesError(f"tls_client_ca_file {client_ca}: no PEM CA certificates "
                                f"({exc})") from None


class ServerCertificates:
    """The server's TLS files: gRPC credentials that follow :meth:`reload`."""

    def __init__(self, settings: Settings) -> None:
        assert settings.tls_cert_file is not None and settings.tls_key_file is not None
        self.cert_file = Path(settings.tls_cert_file)
        self.key_file = Path(settings.tls_key_file)
        self.client_ca_file = (Path(settings.tls_client_ca_file)
                               if settings.tls_client_ca_file is not None else None)
        self._initial = self._configuration()
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        _check(self.cert_file, self.key_file, self.client_ca_file)
        pair = (_read(self.key_file, "tls_key_file"), _read(self.cert_file, "tls_cert_file"))
        roots = (_read(self.client_ca_file, "tls_client_ca_file")
                 if self.client_ca_file is not None else None)
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``: client certificates required with a client CA
        file."""
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch,
            require_client_authentication=self.client_ca_file is not None)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # gRPC's handshake thread; None = keep the configuration in force
        pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Read the files again (SIGHUP); new connections use them. Files that cannot be used
        are logged and the ones in force kept. Whether the new files are in force."""
        try:
            self._pending = self._configuration()
        except TlsFilesError as exc:
            log.error("TLS files not reloaded, the previous ones stay in force: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.cert_file)
        return True
