"""Optional API key and per-client rate limiting. /health stays open to both (for monitors and Docker)."""

from __future__ import annotations

import hmac

from flask import Flask, request

from .errors import Unauthorized

# /health for monitors and Docker; the page and its files (the page asks for the key and sends it itself).
OPEN_ENDPOINTS = {"health.health", "web.index", "web.static", "openapi.openapi_document"}


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
            raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>' or "
                               "'X-API-Key: <key>'", headers={"WWW-Authenticate": 'Bearer realm="transcription"'})


def limit_rate(app: Flask, limit: str) -> None:
    """Per-client request limits (by remote address), kept in memory: the app runs in one process."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    limiter = Limiter(get_remote_address, app=app, default_limits=[limit], storage_uri="memory://",
                      headers_enabled=True)
    limiter.exempt(app.view_functions["health.health"])
