"""One JSON line per request: request id, client, route, status, audio duration, processing time.

Never the transcript or the file name: logs are often shipped elsewhere.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

log = logging.getLogger("serve.access")

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def install(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.monotonic()
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _SAFE_ID.fullmatch(given) else uuid.uuid4().hex

    @app.after_request
    def _log(response: Response) -> Response:
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        started = g.get("started")
        record = {
            "request_id": request_id,
            "client": request.remote_addr,
            "method": request.method,
            "route": request.url_rule.rule if request.url_rule else request.path[:200],
            "status": response.status_code,
            "duration_ms": round((time.monotonic() - started) * 1000, 1) if started else None,
        }
        if g.get("audio_seconds") is not None:
            record["audio_seconds"] = round(g.audio_seconds, 3)
        if g.get("job_id"):
            record["job_id"] = g.job_id
        log.info(json.dumps(record))
        return response
