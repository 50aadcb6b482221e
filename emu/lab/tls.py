"""A lab node's transport: TLS with the lab's certificates (``emu.lab.certs``), the edge's door,
and a user's dial.

Layer: emu (files, sockets). Three ways to authenticate (``auth``):

- ``mtls``: both sides present a certificate of the lab's CA; the edge takes the peer to be
  the node its certificate names, and that node may only speak for itself (a user's Hello
  must carry its own id: ``nodes.core.verifier``).
- ``token``: TLS in which only the edge shows a certificate; each user proves itself with its
  pre-shared token in the Hello, compared in constant time with its own.
- ``insecure``: plain TCP, for a network the lab trusts; the edge's summary says so.

The edge's door (``Gate``) refuses, before any session state is made and with a record
(``refused``: who, why), a peer that fails the handshake (no certificate, another CA's, an
expired one, a replayed handshake, bytes that are not TLS), one that tries to connect too often
(``attempts_per_s`` per address) and a node that already holds ``per_node`` connections.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import ssl
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from emu.errors import ConfigError, PeerGone
from emu.lab.certs import CA_CERT, TOKEN_BYTES, TOKENS, read_certificate
from nodes.core.guard import RateLimit
from nodes.stream import Sink

__all__ = ["AUTH_MODES", "Credentials", "Gate", "credentials", "dial"]

AUTH_MODES = ("mtls", "token", "insecure")
_HEX = re.compile(rf"^[0-9a-f]{{{2 * TOKEN_BYTES}}}$")

Handler = Callable[[trio.abc.Stream, str | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one node proves itself with, and checks others against."""

    auth: str  # mtls, token or insecure
    node: str
    lab: Path | None = None
    token: str = ""  # this node's token (a user, ``token``)
    tokens: Mapping[str, str] = field(default_factory=dict)  # every node's (the edge, ``token``)

    def server_context(self) -> ssl.SSLContext:
        assert self.lab is not None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.lab / CA_CERT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.lab / f"{self.node}.pem", self.lab / f"{self.node}.key")
        ctx.verify_mode = ssl.CERT_REQUIRED if self.auth == "mtls" else ssl.CERT_NONE
        return ctx

    def client_context(self) -> ssl.SSLContext:
        assert self.lab is not None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.lab / CA_CERT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if self.auth == "mtls":
            ctx.load_cert_chain(self.lab / f"{self.node}.pem", self.lab / f"{self.node}.key")
        return ctx


def _check_certificate(lab: Path, node: str) -> None:
    """The node's certificate: present, the CA's, in date, and its key's."""
    ca = read_certificate(lab / CA_CERT, "--lab's CA")
    path = lab / f"{node}.pem"
    cert = read_certificate(path, f"--lab's certificate of {node}")
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as exc:  # a signature or issuer that is not the CA's
        raise ConfigError(
            f"--lab's certificate of {node} ({path}) must be issued by the lab's CA "
            f"({lab / CA_CERT}): {exc or type(exc).__name__}"
        ) from exc
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise ConfigError(
            f"--lab's certificate of {node} ({path}) must be in date, got one that expired "
            f"on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC (draftnet lab init issues anew)"
        )
    if cert.not_valid_before_utc > now:
        raise ConfigError(
            f"--lab's certificate of {node} ({path}) must be in date, got one valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this machine's clock right?)"
        )
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [node]:
        raise ConfigError(f"--lab's certificate {path} must name {node}, got {names}")
    key_path = lab / f"{node}.key"
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--lab's key of {node} must be a PEM key at {key_path} ({exc})") from exc
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
        raise ConfigError(f"--lab's key {key_path} must match the certificate {path}; it does not")


def _read_token(path: Path, node: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--lab must hold {node}'s token at {path} ({exc.strerror})") from exc
    if not _HEX.match(token):
        raise ConfigError(
            f"{node}'s token ({path}) must be {2 * TOKEN_BYTES} hex digits "
            f"({TOKEN_BYTES} bytes), got {len(token)} characters"
        )
    return token


def credentials(lab: Path | None, node: str, auth: str, *, serves: bool) -> Credentials:
    """A node's credentials from the lab directory, checked (ConfigError, one line): ``serves``
    for the edge, which shows its certificate in every mode but ``insecure``."""
    if auth not in AUTH_MODES:
        raise ConfigError(f"--auth must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    if auth == "insecure":
        return Credentials(auth, node)
    if lab is None:
        raise ConfigError("--lab must name the lab's directory (draftnet lab init), or --insecure")
    if not lab.is_dir():
        raise ConfigError(f"--lab must be a directory made by draftnet lab init, got {str(lab)!r}")
    if auth == "mtls" or serves:
        _check_certificate(lab, node)
    else:
        read_certificate(lab / CA_CERT, "--lab's CA")  # to check the edge's certificate
    if auth == "mtls":
        return Credentials(auth, node, lab)
    if not serves:
        return Credentials(auth, node, lab, token=_read_token(lab / f"{node}.token", node))
    try:
        tokens = json.loads((lab / TOKENS).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--lab must hold every node's token in {lab / TOKENS} ({exc})") from exc
    for n, t in tokens.items():
        if not isinstance(t, str) or not _HEX.match(t):
            raise ConfigError(
                f"{lab / TOKENS}: {n}'s token must be {2 * TOKEN_BYTES} hex digits, got "
                f"{len(t) if isinstance(t, str) else type(t).__name__} characters"
            )
    return Credentials(auth, node, lab, tokens=dict(tokens))


def _common_name(stream: trio.SSLStream[trio.SocketStream]) -> str | None:
    cert = stream.getpeercert()
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    return (str(cause) or type(cause).__name__)[:300]


class Gate:
    """The edge's door: TLS (unless insecure), the attempt rate and the per-node cap, then
    ``handler(stream, proved)``; every refusal is recorded to ``sink`` (an ``ev: refused``
    record, which the edge's run log keeps for its summary)."""

    def __init__(
        self,
        cred: Credentials,
        handler: Handler,
        sink: Sink,
        *,
        handshake_timeout_s: float = 5.0,
        attempts_per_s: float = 20.0,
        per_node: int = 2,
    ) -> None:
        self.cred, self.handler, self.sink = cred, handler, sink
        self.handshake_timeout_s = handshake_timeout_s
        self.attempts_per_s = attempts_per_s
        self.per_node = per_node
        self._ctx = cred.server_context() if cred.auth != "insecure" else None
        self._rates: dict[str, RateLimit] = {}
        self._open: dict[str, int] = defaultdict(int)

    def _refuse(self, peer: str, why: str, node: str | None = None) -> None:
        rec: dict[str, Any] = {"ev": "refused", "t": trio.current_time(), "peer": peer,
                               "why": why, "code": None}  # fmt: skip
        if node is not None:
            rec["claims"] = node
        self.sink(rec)

    async def __call__(self, tcp: trio.SocketStream) -> None:
        try:
            host, port = tcp.socket.getpeername()[:2]
        except OSError:
            return  # gone before we looked
        peer = f"{host}:{port}"
        if len(self._rates) > 4096:
            self._rates.clear()  # a flood of addresses must not grow this without bound
        rate = self._rates.setdefault(host, RateLimit(self.attempts_per_s))
        if not rate.allow(trio.current_time()):
            self._refuse(peer, f"more than {self.attempts_per_s:g} connection attempts a second")
            await tcp.aclose()
            return
        if self._ctx is None:
            await self.handler(tcp, None)
            return
        stream = trio.SSLStream(tcp, self._ctx, server_side=True)
        try:
            with trio.fail_after(self.handshake_timeout_s):
                await stream.do_handshake()
        except trio.TooSlowError:
            self._refuse(peer, f"no TLS handshake within {self.handshake_timeout_s:g} s")
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
            self._refuse(peer, f"TLS handshake failed: {_why(exc)}")
        else:
            proved = _common_name(stream) if self.cred.auth == "mtls" else None
            if proved is not None and self._open[proved] >= self.per_node:
                self._refuse(peer, f"{proved} already holds {self.per_node} connections", proved)
            else:
                key = proved or peer
                self._open[key] += 1
                try:
                    await self.handler(stream, proved)
                finally:
                    self._open[key] -= 1
                return
        with trio.move_on_after(1):
            await stream.aclose()


async def dial(host: str, port: int, cred: Credentials, *, server: str = "edge") -> trio.abc.Stream:
    """A stream to the edge at ``host``:``port``: TLS that checks the edge's certificate names
    ``server`` (unless insecure). OSError if nobody answers, PeerGone if the TLS handshake
    fails (the edge refused this node, or is not the lab's)."""
    tcp = await trio.open_tcp_stream(host, port)
    if cred.auth == "insecure":
        return tcp
    stream = trio.SSLStream(tcp, cred.client_context(), server_hostname=server)
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(tcp)
        raise PeerGone(f"TLS handshake with {host}:{port} failed: {_why(exc)}") from exc
    return stream
