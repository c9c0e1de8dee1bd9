"""Where ``twinlock web`` listens: 127.0.0.1 unless told otherwise, and never on the network
without TLS (the page holds the key to the house). TLS is the household's own certificate
(``--cert``/``--key``) or a self-signed one made on first run (``--self-signed``), whose SHA-256
fingerprint is printed to compare on the phone."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinlock.daemon.errors import UsageError
from twinlock.daemon.storage.files import atomic_write
from twinlock.daemon.storage.private_db import PRIVATE_FILE_MODE, make_private_dirs

from ..errors import EnrolmentError

logger = logging.getLogger(__name__)

TLS_DIR = "web-tls"
DEFAULT_PORT = 8443


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (``localhost`` resolves)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the certificate (DER), colon-separated hex


def fingerprint_of(cert_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def self_signed(folder: Path, host: str) -> Tls:
    """The household's self-signed certificate in ``folder/web-tls`` (made once, key 0600)."""
    tls_dir = folder / TLS_DIR
    cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
    if not (cert.is_file() and key.is_file()):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        make_private_dirs(tls_dir, EnrolmentError)
        private = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TwinLock household page")])
        names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname())]
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
        now = dt.datetime.now(dt.UTC)
        certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(private.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(now - dt.timedelta(days=1))
                       .not_valid_after(now + dt.timedelta(days=3650))
                       .add_extension(x509.SubjectAlternativeName(names), critical=False)
                       .sign(private, hashes.SHA256()))
        atomic_write(key, private.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()), PRIVATE_FILE_MODE)
        atomic_write(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        logger.info("made a self-signed certificate in %s", tls_dir)
    return Tls(cert, key, fingerprint_of(cert.read_bytes()))


def choose_tls(listen: str, folder: Path, cert: Path | None, key: Path | None,
               make_self_signed: bool) -> Tls | None:
    """The TLS to serve with, or None on loopback without any; UsageError for a network listen
    without TLS (the reason said)."""
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together")
    if cert is not None and key is not None:
        if make_self_signed:
            raise UsageError("--self-signed or --cert/--key, not both")
        return Tls(cert, key, fingerprint_of(cert.read_bytes()))
    if make_self_signed:
        return self_signed(folder, listen)
    if not is_loopback(listen):
        raise UsageError(
            f"refusing to listen on {listen} without TLS: the page holds the household's faces "
            "and the door's enrolment, and a password sent in clear on the network can be read "
            "by anyone on it. Give --self-signed (a certificate made once in the household "
            "folder; compare its printed fingerprint on the phone) or --cert FILE --key FILE, "
            "or listen on 127.0.0.1.")
    return None


def serve(app: Any, listen: str, port: int, tls: Tls | None) -> None:
    import uvicorn

    scheme = "https" if tls else "http"
    print(f"twinlock web on {scheme}://{listen}:{port}/", flush=True)
    if tls:
        print(f"TLS certificate SHA-256 fingerprint: {tls.fingerprint}", flush=True)
    # proxy_headers off: a client must not pick its own address (X-Forwarded-For) and so
    # escape the per-client login limit
    uvicorn.run(app, host=listen, port=port, log_level="warning", server_header=False,
                proxy_headers=False,
                ssl_certfile=str(tls.cert) if tls else None,
                ssl_keyfile=str(tls.key) if tls else None)
