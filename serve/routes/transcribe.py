"""POST /transcribe, /transcribe/json, /transcribe/srt (synchronous) and /transcribe/async."""

from __future__ import annotations

import io

from flask import Blueprint, jsonify, request, send_file, url_for

from .. import formats
from ..audio import UndecodableAudio, probe
from ..errors import APIError, JobFailed, UnsupportedMedia
from ..jobs import Job, JobStatus
from ..params import parse_params
from ..services import RENDERERS, services
from ..transcriber import TranscriptionParams
from ..uploads import Upload, content_disposition, download_name, take_upload
from .common import now_iso

bp = Blueprint("transcribe", __name__)

_MIMETYPES = {"txt": "text/plain", "srt": "application/x-subrip"}


def _accept() -> tuple[Upload, TranscriptionParams]:
    """Validate the parameters, claim the upload and check that ffmpeg can read it."""
    params = parse_params(request.form, services().settings)
    upload = take_upload(request)  # type: ignore[arg-type]
    try:
        probe(upload.path)
    except UndecodableAudio as exc:
        upload.path.unlink(missing_ok=True)
        raise UnsupportedMedia(f"the file could not be decoded as audio: {exc.reason}", param="file") from exc
    return upload, params


def _transcribe_now(output_format: str) -> Job:
    upload, params = _accept()
    s = services()
    job = s.submit(upload, params, output_format)
    finished = s.jobs.wait(job.id)
    if finished is None:  # the worker was stopped under us (shutdown)
        raise APIError("the server is shutting down")
    if finished.status is JobStatus.FAILED:
        assert finished.failure is not None
        raise JobFailed(finished.failure)
    return finished


def _attachment(job: Job, extension: str):  # type: ignore[no-untyped-def]
    body = RENDERERS[extension](job.result).encode("utf-8")
    response = send_file(io.BytesIO(body), mimetype=_MIMETYPES[extension])
    response.headers["Content-Disposition"] = content_disposition(download_name(job.filename, extension))
    response.headers["X-Output-File"] = job.output_file or ""
    return response


@bp.post("/transcribe/json")
def transcribe_json():  # type: ignore[no-untyped-def]
    job = _transcribe_now("txt")
    return jsonify(
        status="success",
        transcription=job.result.text,
        output_file=job.output_file,
        timestamp=now_iso(),
        filename=job.filename,
        duration=round(job.result.duration, 3),
        segments=formats.to_segments(job.result),
    )


@bp.post("/transcribe")
def transcribe_text():  # type: ignore[no-untyped-def]
    return _attachment(_transcribe_now("txt"), "txt")


@bp.post("/transcribe/srt")
def transcribe_srt():  # type: ignore[no-untyped-def]
    return _attachment(_transcribe_now("srt"), "srt")


@bp.post("/transcribe/async")
def transcribe_async():  # type: ignore[no-untyped-def]
    upload, params = _accept()
    job = services().submit(upload, params, "txt")
    status_url = url_for("jobs.job_status", job_id=job.id)
    response = jsonify(job_id=job.id, status=job.status.value, status_url=status_url, created_at=now_iso())
    response.status_code = 202
    response.headers["Location"] = status_url
    return response
