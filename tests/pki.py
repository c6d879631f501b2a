"""A throwaway PKI for tests: a CA and certificates it signed (for localhost and
127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0] if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return bytes(
        obj.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA (``ca``), and a server and a client certificate it signed
    (``server_cert``, ``server_key``, ``client_cert``, ``client_key``), as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("agentready test CA", ca_key, None, ca=True)
    files = {"ca": folder / "ca.pem"}
    files["ca"].write_bytes(_pem(ca))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(who, key, (ca.subject, ca_key), ca=False)
        files[f"{who}_cert"] = folder / f"{who}.pem"
        files[f"{who}_key"] = folder / f"{who}-key.pem"
        files[f"{who}_cert"].write_bytes(_pem(cert))
        files[f"{who}_key"].write_bytes(_pem(key))
    return files
