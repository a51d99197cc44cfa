"""Host checks against DNS rebinding, the optional API keys and per-client rate limiting. /health stays open
to the key and the limit (for monitors and Docker).

Each key owns the jobs it creates: a request learns its owner (a hash of its key, never the key) and whether
its key is an admin key, which sees every job."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from flask import Flask, current_app, g, request

from .errors import ForbiddenHost, Unauthorized
from .intake import Admission, Refusal

if TYPE_CHECKING:
    from .config import Settings

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


def allowed_host_names(allowed_setting: str, listen_host: str) -> set[str] | None:
    """The Host names requests may use (None: any). IP addresses are always allowed (a rebinding attack
    sends its own name), so are loopback names; names beyond this machine's come from ``--allowed-hosts``."""
    configured = {h.strip().lower() for h in allowed_setting.split(",") if h.strip()}
    if "*" in configured:
        return None
    return (configured | LOOPBACK_NAMES) if configured else machine_names(listen_host)


def _host_refusal(host_header: str, allowed: set[str]) -> str | None:
    """Why a request for ``host_header`` is refused (None: it is not)."""
    name = _host_name(host_header)
    if name in allowed or _is_address(name):
        return None
    log.warning("refused a request for Host %r (not in --allowed-hosts)", name[:100])
    return f"this server does not answer for host {name[:100]!r}; add it to --allowed-hosts"


def check_host(app: Flask, allowed_setting: str, listen_host: str) -> None:
    """Answer 403 to a request whose Host is not this server's: a page on another site that rebinds its own
    name to this machine's address gets nothing."""
    allowed = allowed_host_names(allowed_setting, listen_host)
    if allowed is None:
        return

    @app.before_request
    def _check_host() -> None:
        if (why := _host_refusal(request.host or "", allowed)) is not None:
            raise ForbiddenHost(why)


def _supplied_key(headers: Mapping[str, str]) -> str | None:
    header = headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key")


def _matching(supplied: str | None, secrets: Sequence[bytes]) -> int | None:
    """Which of ``secrets`` is ``supplied``, compared with every one without stopping early: timing says
    nothing about which one matched."""
    matches = [hmac.compare_digest((supplied or "").encode(), secret) for secret in secrets]
    return matches.index(True) if any(matches) else None


_KEY_REQUIRED = ("a valid API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="transcription"'}


def header_checks(settings: Settings) -> Admission:
    """The Host and API-key checks, for the intake to run on a request's headers before it stores a body:
    a stranger's upload is refused before a byte of it reaches the disk. (The app checks again, and
    everything else, once the request has arrived.)"""
    allowed = allowed_host_names(settings.allowed_hosts, settings.host)
    secrets = [k.encode() for k in settings.api_keys]

    def admit(_method: str, path: str, headers: dict[str, str]) -> Refusal | None:
        host = headers.get("host")  # none (HTTP/1.0): the app judges the address it was reached at
        if allowed is not None and host is not None and (why := _host_refusal(host, allowed)) is not None:
            return Refusal(ForbiddenHost.status, ForbiddenHost.code, why)
        if secrets and _matching(_supplied_key(headers), secrets) is None:
            log.info("refused an upload without a valid API key to %s", path[:200])
            return Refusal(Unauthorized.status, Unauthorized.code, _KEY_REQUIRED, _CHALLENGE)
        return None

    return admit


KEYS_REQUIRED = "qwen_omni.keys_required"  # app.config: this app checks keys, so jobs have owners


def owner_id(key: str) -> str:
    """The stable owner id of the jobs ``key`` creates: a hash, so the job store never holds a key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class _Key(NamedTuple):
    secret: bytes
    owner: str
    admin: bool


def require_api_key(app: Flask, keys: Sequence[str], admin_keys: Sequence[str] = ()) -> None:
    """Refuse requests without one of ``keys`` or ``admin_keys`` (Authorization: Bearer, or X-API-Key), compared
    in constant time; a request that passes carries its owner and whether it sees every job (see
    :func:`request_owner`, :func:`sees_all_jobs`)."""
    # Admin keys first: a key listed both ways is an admin key.
    expected = [_Key(k.encode(), owner_id(k), True) for k in admin_keys]
    expected += [_Key(k.encode(), owner_id(k), False) for k in keys]
    app.config[KEYS_REQUIRED] = True

    @app.before_request
    def _check_api_key() -> None:
        if request.method == "OPTIONS" or request.endpoint in OPEN_ENDPOINTS:
            return  # CORS preflights carry no credentials; health checks must work without them
        match = _matching(_supplied_key(request.headers), [key.secret for key in expected])
        if match is None:
            log.info("refused a request without a valid API key from %s to %s", request.remote_addr, request.path)
            raise Unauthorized(_KEY_REQUIRED, headers=_CHALLENGE)
        key = expected[match]
        g.job_owner, g.sees_all_jobs = key.owner, key.admin


def _keys_required() -> bool:
    return bool(current_app.config.get(KEYS_REQUIRED))


def request_owner() -> str | None:
    """The owner id of this request's key, for the jobs it creates; None when the server has no keys."""
    return g.get("job_owner") if _keys_required() else None


def sees_all_jobs() -> bool:
    """Whether this request may see and cancel every job: an admin key, or a server without keys."""
    if not _keys_required():
        return True
    return bool(g.get("sees_all_jobs", False))  # no key checked (cannot happen on a job route): nothing more


def may_see(job_owner: str | None) -> bool:
    """Whether this request may see a job owned by ``job_owner``. Jobs without an owner (made before keys
    were configured) are an admin's only."""
    if sees_all_jobs():
        return True
    owner = request_owner()
    return owner is not None and job_owner == owner


def limit_rate(app: Flask, limit: str) -> None:
    """Per-client request limits (by remote address), kept in memory: the app runs in one process."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    limiter = Limiter(get_remote_address, app=app, default_limits=[limit], storage_uri="memory://",
                      headers_enabled=True)
    limiter.exempt(app.view_functions["health.health"])
