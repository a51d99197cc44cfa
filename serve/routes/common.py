"""Helpers shared by the route modules."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

from flask import Response, send_file

from .. import formats
from ..jobs import Job, JobStatus
from ..language_id import transcript_language
from ..transcript import Piece, Transcript
from ..uploads import content_disposition, download_name


def iso(moment: datetime | None) -> str | None:
    """The guide's timestamp format: 2025-10-11T02:00:00.000000."""
    return moment.isoformat(timespec="microseconds") if moment else None


def now_iso() -> str:
    return iso(datetime.now())  # type: ignore[return-value]


def job_body(job: Job, *, with_result: bool = True) -> dict[str, Any]:
    """A job as the API shows it: the guide's fields for each status, plus progress."""
    body: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status.value,
        "filename": job.filename,
        "created_at": iso(job.created_at),
    }
    progress = job.progress
    body["progress"] = {
        "segments_done": progress.segments_done,
        "segments_total": progress.segments_total,
        "audio_seconds_done": round(progress.audio_seconds_done, 3),
        "audio_seconds_total": round(job.audio_duration, 3) if job.audio_duration else None,
    }
    if job.status is JobStatus.PROCESSING:
        body["stage"] = job.stage
        body["started_at"] = iso(job.started_at)
        body["progress"]["eta_seconds"] = eta_seconds(job)
        pieces = tuple(Piece.from_dict(p) for p in progress.partial)
        body["partial_transcription"] = Transcript(pieces).text
    elif job.status is JobStatus.COMPLETED:
        assert job.result is not None
        transcript = Transcript.from_dict(job.result)
        if with_result:
            body["transcription"] = transcript.text
        body.update(output_file=job.output_file, completed_at=iso(job.completed_at),
                    duration=round(transcript.duration, 3))
        if job.output_error:
            body["output_error"] = job.output_error
    else:
        assert job.failure is not None
        body.update(error=job.failure.message, code=job.failure.code, completed_at=iso(job.completed_at))
    return body


def eta_seconds(job: Job) -> float | None:
    """Time left at the pace so far (None until a segment is done or when the length is unknown)."""
    done = job.progress.audio_seconds_done
    if not (job.started_at and job.audio_duration and done > 0):
        return None
    elapsed = (datetime.now() - job.started_at).total_seconds()
    return round(max(0.0, elapsed / done * (job.audio_duration - done)), 1)


def attachment(job: Job, extension: str, *, word_level: bool = False) -> Response:
    """The job's transcript as a download named after the upload (``audio.mp3`` -> ``audio.srt``); VTT with
    word timestamps when the job asked for them (or ``word_level``)."""
    transcript = Transcript.from_dict(job.result or {"pieces": [], "duration": 0})
    body = formats.render(extension, transcript,
                          word_level=word_level or bool(job.params.get("word_timestamps"))).encode("utf-8")
    response = send_file(io.BytesIO(body), mimetype=formats.MIMETYPES[extension])
    note = formats.word_timestamps_note(transcript)
    if note and extension in ("srt", "vtt"):
        response.headers["X-Word-Timestamps-Note"] = header_safe(note)
    response.headers["Content-Disposition"] = content_disposition(download_name(job.filename, extension))
    response.headers["X-Output-File"] = job.output_file or ""
    return response


def transcript_json(job: Job, *, words: bool = False) -> dict[str, Any]:
    """The native JSON answer for a finished job (the guide's fields, plus segments, with their words when the
    job asked for word timestamps, or ``words``)."""
    transcript = Transcript.from_dict(job.result or {"pieces": [], "duration": 0})
    words = words or bool(job.params.get("word_timestamps"))
    return {
        "status": "success",
        "transcription": transcript.text,
        "output_file": job.output_file,
        "timestamp": now_iso(),
        "job_id": job.id,
        "filename": job.filename,
        "duration": round(transcript.duration, 3),
        # The ISO code the request named, else the one detected from the text (null when unsure); a
        # translation's is the language it was translated into
        "language": answer_language(job.params, transcript),
        **({"task": "translate", "target_language": job.params["target_language"]}
           if job.params.get("task") == "translate" else {}),
        "segments": formats.to_segments(transcript, words=words),
        **({"word_timestamps_note": note} if words and (note := formats.word_timestamps_note(transcript)) else {}),
        **({"output_error": job.output_error} if job.output_error else {}),
    }


def answer_language(params: dict[str, Any], transcript: Transcript) -> str | None:
    """The language of the answer's text (ISO code): the translation's target, the one the request named, the
    one the model said it heard, else the one its text reads as (None when unsure)."""
    if params.get("task") == "translate":
        return params["target_language"]
    return transcript_language(params.get("language", "auto"), transcript.text, transcript.heard_language)


def header_safe(text: str) -> str:
    """A header value: ASCII on one line (notes may quote a language's or a file's name)."""
    return " ".join(text.encode("ascii", "replace").decode().split())[:500]
