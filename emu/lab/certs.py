"""A lab's credentials: its certificate authority, each node's certificate, each node's token.

Layer: emu (files). ``draftnet lab init DIR --nodes edge,u0,u1`` makes them (``init_lab``);
the nodes read them (``emu.lab.tls``). In DIR:

    ca.pem, ca.key          the lab's CA (the key signs more nodes later; keep it private)
    NODE.pem, NODE.key      each node's certificate (CN and DNS name: the node's name) and key
    NODE.token              each node's pre-shared token, for labs that cannot hand out
                            certificates (``--auth token``: TLS that proves only the edge)
    tokens.json             every node's token, for the edge

Keys are ECDSA P-256, written readable by their owner alone. ``init_lab`` on a directory that
has a CA keeps it and issues only the nodes that have no certificate yet.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emu.errors import ConfigError

__all__ = [
    "CA_CERT",
    "TOKENS",
    "TOKEN_BYTES",
    "LabFiles",
    "check_node_name",
    "init_lab",
    "issue",
    "read_certificate",
]

CA_CERT, CA_KEY, TOKENS = "ca.pem", "ca.key", "tokens.json"
TOKEN_BYTES = 32  # a token is this many random bytes, as hex
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class LabFiles:
    dir: Path
    issued: tuple[str, ...]  # the nodes given a certificate now
    kept: tuple[str, ...]  # the nodes that had one


def check_node_name(name: str, field: str = "--nodes") -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"{field} must name nodes with a letter then letters, digits, _ or - "
            f"(at most 63), got {name!r}"
        )
    return name


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "draftnet lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _make_ca(days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("draftnet lab CA"))
        .issuer_name(_name("draftnet lab CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    node: str,
    *,
    days: int,
    not_before: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A certificate for ``node`` signed by the CA, and its key (both PEM). It serves as a
    server's and as a client's (mutual TLS), for the DNS name ``node``."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(node))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def read_certificate(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"{what} must be a certificate file, got {str(path)!r} (no such file)"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{what} must be a PEM certificate, got {str(path)!r} ({exc})") from exc


def _load_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = read_certificate(d / CA_CERT, "the lab's CA")
    try:
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the lab's CA key must be readable at {str(d / CA_KEY)!r} to issue more nodes ({exc})"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"the lab's CA key {str(d / CA_KEY)!r} must be an EC key")
    return cert, key


def init_lab(d: Path, nodes: Sequence[str], *, days: int = 365) -> LabFiles:
    """Make (or extend) the lab in ``d``: its CA, then a certificate, key and token for each
    of ``nodes`` that has none."""
    if not nodes:
        raise ConfigError("--nodes must name at least one node, got none")
    for n in nodes:
        check_node_name(n)
    if not 1 <= days <= 36500:
        raise ConfigError(f"--days must be in [1, 36500], got {days}")
    d.mkdir(parents=True, exist_ok=True)
    if (d / CA_CERT).exists():
        ca, ca_key = _load_ca(d)
    else:
        ca, ca_key = _make_ca(days)
        _write_private(d / CA_KEY, _pem_key(ca_key))
        (d / CA_CERT).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tokens: dict[str, str] = {}
    if (d / TOKENS).exists():
        tokens = json.loads((d / TOKENS).read_text())
    issued, kept = [], []
    for n in dict.fromkeys(nodes):
        if (d / f"{n}.pem").exists() and n in tokens:
            kept.append(n)
            continue
        cert, key = issue(ca, ca_key, n, days=days)
        _write_private(d / f"{n}.key", key)
        (d / f"{n}.pem").write_bytes(cert)
        tokens[n] = secrets.token_hex(TOKEN_BYTES)
        _write_private(d / f"{n}.token", tokens[n].encode())
        issued.append(n)
    _write_private(d / TOKENS, json.dumps(tokens, indent=1, sort_keys=True).encode())
    return LabFiles(dir=d, issued=tuple(issued), kept=tuple(kept))
