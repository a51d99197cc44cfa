"""Errors the API reports, how domain failures map onto them, and the JSON shape of every error.

Every error leaves as ``{"status": "error", "error": <message>, "code": <code>}`` (plus ``param`` for a bad
parameter) with the matching HTTP status. No traceback ever reaches a client.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .audio import UndecodableAudio
from .batching import SegmentOutOfMemory
from .jobs import JobFailure
from .model_manager import ModelUnavailable

log = logging.getLogger(__name__)

# Headers of werkzeug's own error responses that must survive our JSON rewrite.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                 "X-RateLimit-Reset")


class APIError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidParameter(APIError):
    status = 400
    code = "invalid_parameter"


class MissingFile(APIError):
    status = 400
    code = "missing_file"


class EmptyFile(APIError):
    status = 400
    code = "empty_file"


class Unauthorized(APIError):
    status = 401
    code = "unauthorized"


class ForbiddenHost(APIError):
    status = 403
    code = "forbidden_host"


class NotFound(APIError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"  # OpenAI's code for an unknown model id


class Conflict(APIError):
    status = 409
    code = "conflict"


class UnsupportedMedia(APIError):
    status = 415
    code = "unsupported_media"


class ServiceUnavailable(APIError):
    status = 503
    code = "model_unavailable"


class QueueFullError(APIError):
    status = 503
    code = "queue_full"


class ShuttingDownError(APIError):
    status = 503
    code = "shutting_down"


class StoreUnavailableError(APIError):
    status = 503
    code = "store_unavailable"


class InsufficientStorage(APIError):
    status = 507
    code = "insufficient_storage"


# A full disk, or a full quota: the write failed for want of space, not because of the request.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
STORAGE_RETRY_AFTER = "60"


def is_out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


class JobFailed(APIError):
    """A transcription the client waited for failed: its failure, as an HTTP error."""

    def __init__(self, failure: JobFailure) -> None:
        super().__init__(failure.message)
        self.status = failure.http_status
        self.code = failure.code


def failure_of(exc: BaseException) -> JobFailure:
    """What a failed transcription tells its client, by cause."""
    if isinstance(exc, UndecodableAudio):
        return JobFailure(f"the file could not be decoded as audio: {exc.reason}", UnsupportedMedia.code, 415)
    if isinstance(exc, ModelUnavailable):
        return JobFailure(f"the model could not be loaded: {exc.reason}", ServiceUnavailable.code, 503)
    if isinstance(exc, SegmentOutOfMemory):
        return JobFailure(f"the GPU ran out of memory ({exc}); retry with a smaller segment_duration or "
                          "max_new_tokens, or when the GPU is less busy", "gpu_out_of_memory", 503)
    if isinstance(exc, APIError):
        return JobFailure(exc.message, exc.code, exc.status)
    if is_out_of_space(exc):
        return JobFailure("the server's disk is full (decoding needs scratch space under temp/); retry when "
                          "space is freed", InsufficientStorage.code, InsufficientStorage.status)
    return JobFailure(f"transcription failed ({type(exc).__name__}); see the server log", "transcription_failed")


OPENAI_PREFIX = "/v1/"


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(message: str, code: str, status: int, param: str | None = None, *,
               openai: bool = False) -> dict[str, Any]:
    """The native error shape, or OpenAI's ``{"error": {message, type, param, code}}`` (for /v1/)."""
    if openai:
        return {"error": {"message": message, "type": _openai_type(status), "param": param, "code": code}}
    body: dict[str, Any] = {"status": "error", "error": message, "code": code}
    if param:
        body["param"] = param
    return body


def error_response(message: str, code: str, status: int, param: str | None = None) -> tuple[Response, int]:
    return jsonify(error_body(message, code, status, param, openai=request.path.startswith(OPENAI_PREFIX))), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(exc: APIError):  # type: ignore[no-untyped-def]
        response, status = error_response(exc.message, exc.code, exc.status, exc.param)
        response.headers.update(exc.headers)
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        status = exc.code or 500
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                429: "rate_limited"}.get(status, (exc.name or "error").lower().replace(" ", "_"))
        message = exc.description or exc.name
        original = exc.get_response()
        if status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.path} (allowed: " \
                      f"{original.headers.get('Allow', '')})"
        elif status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"the upload is larger than this server accepts ({limit / 1024**2:.0f} MiB)" if limit else message
        elif status == 429:
            message = f"too many requests: the limit is {exc.description}"
        response, status = error_response(message, code, status)
        for header in _KEPT_HEADERS:
            if header in original.headers:
                response.headers[header] = original.headers[header]
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        if is_out_of_space(exc):  # an upload that does not fit: its partial file goes with the request
            log.error("out of disk space: %s", exc)
            message = "the server has no space left to store the upload; retry later or send a smaller file"
            response, status = error_response(message, InsufficientStorage.code, InsufficientStorage.status)
            response.headers["Retry-After"] = STORAGE_RETRY_AFTER
            return response, status
        log.exception("unhandled error")
        return error_response("internal server error; see the server log", "internal_error", 500)
