"""Who may call the HTTP API: bearer tokens from a file, loopback detection, TLS.

Beyond loopback the API requires a token (``[api] token_file``): the agent refuses to start
without one. Tokens are compared in constant time against every configured token, so the time an
answer takes says nothing about how close a guess was. ``/healthz``, ``/readyz`` and the V2 health
routes stay open (probes carry no secrets) but show no job history without a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import ssl
import stat
from collections.abc import Iterable
from pathlib import Path

from device_agent.contract.errors import ConfigError

__all__ = ["MIN_TOKEN_CHARS", "Tokens", "is_loopback", "load_tokens", "tls_context"]

log = logging.getLogger("edgekit.agent.http")

#: shortest token accepted: 128 bits as hex (``openssl rand -hex 32`` gives 64 characters)
MIN_TOKEN_CHARS = 32


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only (127.0.0.0/8, ::1, "localhost")."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


class Tokens:
    """The accepted bearer tokens; ``check(header)`` is True for ``Authorization: Bearer <one of them>``."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        if not self._tokens:
            raise ValueError("Tokens needs at least one token")

    def __len__(self) -> int:
        return len(self._tokens)

    def check(self, authorization: str | None) -> bool:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        g = given.strip().encode("latin-1", "replace")
        ok = False
        for t in self._tokens:  # every token compared, whatever matched: the time does not depend on which one
            ok |= hmac.compare_digest(g, t)
        return ok


def load_tokens(path: Path, *, field: str = "api.token_file") -> Tokens:
    """The tokens in ``path``: one per line; blank lines and lines starting with '#' are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError as e:
        raise ConfigError(f"[api] token_file {str(path)!r} cannot be read: {e.strerror}; create it with one token per line "
                          "(e.g. `openssl rand -hex 32 > FILE`)", field=field) from None
    except UnicodeDecodeError:
        raise ConfigError(f"[api] token_file {str(path)!r} is not UTF-8 text; it holds one token per line", field=field) from None
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise ConfigError(f"[api] token_file {str(path)!r} holds no token; add one per line (e.g. `openssl rand -hex 32`)", field=field)
    for i, t in enumerate(tokens, 1):
        if len(t) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in t):
            raise ConfigError(f"[api] token_file {str(path)!r}: token {i} has {len(t)} characters; tokens need at least {MIN_TOKEN_CHARS} "
                              "printable characters without spaces (e.g. `openssl rand -hex 32`)", field=field)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("[api] token_file %s is readable by other users (mode %o); chmod 600 it", path, stat.S_IMODE(mode))
    return Tokens(tokens)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or newer) for ``[api] tls_cert`` / ``tls_key``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"[api] tls_cert {str(cert)!r} / tls_key {str(key)!r} cannot be loaded: {e}; give a PEM certificate "
                          "chain and its private key", field="api.tls_cert") from None
    return ctx
