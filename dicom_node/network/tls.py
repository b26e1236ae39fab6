"""TLS contexts for the listener and for SCU connections (PS3.15 Annex B)."""

from __future__ import annotations

import ssl
from pathlib import Path

from dicom_node.settings import TLSSettings


def server_context(tls: TLSSettings) -> ssl.SSLContext:
    """A server context from the configured files; mutual TLS when a CA file is set."""
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("TLS needs a certificate and a key file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=tls.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    *, ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client context that verifies the peer against ``ca_file`` (system CAs when None)."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=None if ca_file is None else str(ca_file)
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # DICOM peers are addressed by IP and AE title
    if cert_file is not None:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    return context
