"""Host checks against DNS rebinding, the optional API key and per-client rate limiting. /health stays open
to the key and the limit (for monitors and Docker)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket

from flask import Flask, request

from .errors import ForbiddenHost, Unauthorized

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

# /health for monitors and Docker; the page and its files (the page asks for the key and sends it itself).
OPEN_ENDPOINTS = {"health.health", "web.index", "web.static", "openapi.openapi_document"}


def _host_name(host_header: str) -> str:
    """``example.com:5000`` -> ``example.com``; ``[::1]:5000`` -> ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def machine_names(listen_host: str) -> set[str]:
    """The names this machine answers to: what a browser puts in Host when it reaches the server by name."""
    names = set(LOOPBACK_NAMES)
    for name in (listen_host, socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower())
    return names


def check_host(app: Flask, allowed_setting: str, listen_host: str) -> None:
    """Answer 403 to a request whose Host is not this server's: a page on another site that rebinds its own
    name to this machine's address gets nothing. IP addresses are always allowed (a rebinding attack sends
    its own name), so are loopback names; names beyond this machine's come from ``--allowed-hosts``."""
    configured = {h.strip().lower() for h in allowed_setting.split(",") if h.strip()}
    if "*" in configured:
        return
    allowed = (configured | LOOPBACK_NAMES) if configured else machine_names(listen_host)

    @app.before_request
    def _check_host() -> None:
        name = _host_name(request.host or "")
        if name in allowed or _is_address(name):
            return
        log.warning("refused a request for Host %r (not in --allowed-hosts)", name[:100])
        raise ForbiddenHost(f"this server does not answer for host {name[:100]!r}; add it to --allowed-hosts")


def _supplied_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key")


def require_api_key(app: Flask, keys: list[str]) -> None:
    """Refuse requests without one of ``keys`` (Authorization: Bearer, or X-API-Key), compared in constant time."""
    expected = [k.encode() for k in keys]

    @app.before_request
    def _check_api_key() -> None:
        if request.method == "OPTIONS" or request.endpoint in OPEN_ENDPOINTS:
            return  # CORS preflights carry no credentials; health checks must work without them
        supplied = (_supplied_key() or "").encode()
        # Compare against every key without stopping early: timing says nothing about which one matched.
        matches = [hmac.compare_digest(supplied, key) for key in expected]
        if not any(matches):
            log.info("refused a request without a valid API key from %s to %s", request.remote_addr, request.path)
            raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>' or "
                               "'X-API-Key: <key>'", headers={"WWW-Authenticate": 'Bearer realm="transcription"'})


def limit_rate(app: Flask, limit: str) -> None:
    """Per-client request limits (by remote address), kept in memory: the app runs in one process."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    limiter = Limiter(get_remote_address, app=app, default_limits=[limit], storage_uri="memory://",
                      headers_enabled=True)
    limiter.exempt(app.view_functions["health.health"])
