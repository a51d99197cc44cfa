"""OpenAI-compatible audio API: POST /v1/audio/transcriptions and /v1/audio/translations, GET /v1/models and
/v1/models/{id}.

Clients built for OpenAI (the ``openai`` SDKs, LangChain, Open WebUI, subtitle tools) work unchanged with
``base_url=http://host:5000/v1``. Requests become the same jobs on the same queue as the native endpoints;
errors take OpenAI's shape (see ``errors.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import PurePosixPath

from flask import Blueprint, Response, jsonify, request

from .. import formats
from ..config import Settings
from ..errors import InvalidParameter, ModelNotFound
from ..jobs import Job, JobKind, JobStatus
from ..language_id import openai_name
from ..params import parse_params
from ..services import services
from ..text import separator
from ..transcriber import TranscriptionParams
from ..transcript import Transcript
from .common import answer_language, header_safe
from .transcribe import client_disconnected, submit_upload, wait_for

bp = Blueprint("openai", __name__, url_prefix="/v1")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAM_POLL_SECONDS = 0.1
_STARTED = int(time.time())


# Names that OpenAI clients hard-code: accepted in requests (as is any name) and by GET /v1/models/{id}.
MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")


def served_model_name(settings: Settings) -> str:
    """--served-model-name, else the checkpoint folder's name: never a server path (which would also make a
    broken /v1/models/{id} URL)."""
    return settings.served_model_name or PurePosixPath(settings.checkpoint_path.replace("\\", "/").rstrip("/")).name \
        or "qwen2.5-omni"


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": "qwen"}


@bp.get("/models")
def list_models():  # type: ignore[no-untyped-def]
    """The served model (OpenAI-compatible)
    ---
    get:
      summary: The served model
      responses:
        200:
          description: one model
          content:
            application/json:
              schema: ModelList
        401: OpenAIUnauthorized
        429: OpenAIRateLimited
    """
    return jsonify(object="list", data=[_model(served_model_name(services().settings))])


@bp.get("/models/<path:model_id>")
def retrieve_model(model_id: str):  # type: ignore[no-untyped-def]
    """One model by its id: the served model's name, or one of the aliases clients hard-code
    ---
    get:
      summary: One model (the served one, or an alias such as whisper-1)
      parameters:
        - {name: model_id, in: path, required: true, schema: {type: string}}
      responses:
        200:
          description: the model
          content:
            application/json:
              schema: Model
        401: OpenAIUnauthorized
        404: OpenAINotFound
        429: OpenAIRateLimited
    """
    served = served_model_name(services().settings)
    if model_id not in (served, *MODEL_ALIASES):
        raise ModelNotFound(f"no model {model_id!r}: this server serves {served!r} (and answers to "
                            f"{', '.join(MODEL_ALIASES)})", param="model")
    return jsonify(_model(model_id))


def _options(*, translation: bool = False) -> tuple[str, bool, bool]:
    """(response_format, stream, word timestamps) of the request; translations take neither of the last two."""
    form = request.form
    model = form.get("model", "")
    if not model.strip() or len(model) > 256:
        raise InvalidParameter("model is required (any name; this server serves one model, see /v1/models)",
                               param="model")
    response_format = (form.get("response_format") or "json").lower()
    if response_format not in RESPONSE_FORMATS:
        raise InvalidParameter(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                               param="response_format")
    granularities = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    for granularity in granularities:
        if granularity not in ("segment", "word"):
            raise InvalidParameter(f"timestamp_granularities[] must be segment or word (got {granularity[:40]!r})",
                                   param="timestamp_granularities[]")
    words = "word" in granularities
    if words and translation:  # the aligner times the spoken words, not their translation
        raise InvalidParameter("word timestamps are not available for translations",
                               param="timestamp_granularities[]")
    if words and response_format not in ("verbose_json", "srt", "vtt"):
        raise InvalidParameter("word timestamps need response_format verbose_json (or srt/vtt)",
                               param="timestamp_granularities[]")
    stream = (form.get("stream") or "false").lower() in ("true", "1")
    if stream and (translation or response_format not in ("json", "text")):
        raise InvalidParameter("stream=true is available for transcriptions with response_format json or text",
                               param="stream")
    return response_format, stream, words


@bp.post("/audio/transcriptions")
def create_transcription():  # type: ignore[no-untyped-def]
    """Transcribe an upload (OpenAI-compatible)
    ---
    post:
      summary: Transcribe an upload (OpenAI-compatible)
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema: OpenAITranscribeForm
      responses:
        200:
          description: the transcript, in the requested response_format (or a stream of events)
          content:
            application/json:
              schema:
                oneOf: [{$ref: '#/components/schemas/OpenAITranscription'},
                        {$ref: '#/components/schemas/OpenAIVerboseTranscription'}]
            text/plain: {schema: {type: string}}
            text/vtt: {schema: {type: string}}
            text/event-stream: {schema: {type: string}}
        400: OpenAIBadRequest
        401: OpenAIUnauthorized
        409: OpenAIConflict
        413: OpenAITooLarge
        415: OpenAIUnsupported
        429: OpenAIRateLimited
        500: OpenAIServerError
        503: OpenAIUnavailable
    """
    response_format, stream, words = _options()
    task = (request.form.get("task") or "").strip().lower()
    if task == "translate" or request.form.get("target_language", "").strip():
        raise InvalidParameter("this endpoint transcribes: translations are POST /v1/audio/translations",
                               param="task" if task else "target_language")
    if task not in ("", "transcribe"):
        raise InvalidParameter(f"task must be transcribe here (got {task[:40]!r})", param="task")
    params = parse_params(request.form, services().settings, align_by_default=response_format in ("srt", "vtt"),
                          words_asked=True if words else None)
    if stream:
        return _stream(submit_upload("txt", JobKind.SYNC, params))
    return _answer(params, response_format, words)


@bp.post("/audio/translations")
def create_translation():  # type: ignore[no-untyped-def]
    """Translate an upload's speech into English (OpenAI-compatible)
    ---
    post:
      summary: Translate an upload's speech into English (OpenAI-compatible)
      description: Qwen2.5-Omni translates with its authors' speech-translation instruction. A server whose
        model transcribes only (Qwen3-ASR) answers 400. The native endpoints take task=translate with a
        target_language for other languages.
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema: OpenAITranslateForm
      responses:
        200:
          description: the translation, in the requested response_format
          content:
            application/json:
              schema:
                oneOf: [{$ref: '#/components/schemas/OpenAITranslation'},
                        {$ref: '#/components/schemas/OpenAIVerboseTranslation'}]
            text/plain: {schema: {type: string}}
            text/vtt: {schema: {type: string}}
        400: OpenAIBadRequest
        401: OpenAIUnauthorized
        409: OpenAIConflict
        413: OpenAITooLarge
        415: OpenAIUnsupported
        429: OpenAIRateLimited
        500: OpenAIServerError
        503: OpenAIUnavailable
    """
    response_format, _stream_asked, _words = _options(translation=True)
    # OpenAI's translations are into English; the form names no language (a `language` given is the spoken one).
    form = {key: value for key, value in request.form.items() if key not in ("task", "target_language")}
    params = parse_params(form, services().settings, task="translate")
    return _answer(params, response_format, words=False)


def _answer(params: TranscriptionParams, response_format: str, words: bool):  # type: ignore[no-untyped-def]
    """Run the request's job and answer in OpenAI's ``response_format``."""
    translation = params.task == "translate"
    saved_as = response_format if response_format in ("srt", "vtt") else "txt"
    job = wait_for(submit_upload(saved_as, JobKind.SYNC, params))
    transcript = Transcript.from_dict(job.result or {"pieces": [], "duration": 0})
    if response_format == "json":
        return jsonify(text=transcript.text) if translation else \
            jsonify(text=transcript.text, usage=formats.usage(transcript))
    if response_format == "verbose_json":
        language = openai_name(answer_language(job.params, transcript))
        return jsonify(formats.to_verbose_json(transcript, language=language, temperature=params.temperature,
                                               words=words, task=params.task))
    output_format = {"text": "txt"}.get(response_format, response_format)
    response = Response(formats.render(output_format, transcript, word_level=words),
                        mimetype=formats.OPENAI_MIMETYPES[output_format])
    note = formats.word_timestamps_note(transcript)
    if note and output_format in ("srt", "vtt"):
        response.headers["X-Word-Timestamps-Note"] = header_safe(note)
    return response


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _stream(job: Job) -> Response:
    """Server-sent events: one ``transcript.text.delta`` per segment as it finishes, then ``transcript.text.done``.

    The deltas are the segments' real texts, sent when the model has produced them (not a finished
    transcript cut into pieces).
    """
    jobs = services().jobs
    # The queue's own store: an accepted stream waits out a job-store outage (a scale-out API's Redis
    # restarting) like the job itself, instead of breaking off.
    store = jobs.store
    environ = request.environ

    def events() -> Iterator[str]:
        sent = 0
        text_so_far = ""
        try:
            while True:
                current = store.get(job.id)
                if current is None:
                    return
                pieces = current.result["pieces"] if current.result else list(current.progress.partial)
                for piece in pieces[sent:]:
                    text = piece["text"].strip()
                    if text:
                        delta = separator(text_so_far, text) + text
                        text_so_far += delta
                        yield _event({"type": "transcript.text.delta", "delta": delta})
                    sent += 1
                if current.status is JobStatus.COMPLETED:
                    text = Transcript.from_dict(current.result).text  # type: ignore[arg-type]
                    yield _event({"type": "transcript.text.done", "text": text})
                    return
                if current.finished:
                    failure = current.failure
                    yield _event({"error": {"message": failure.message if failure else "transcription failed",
                                            "type": "server_error", "param": None,
                                            "code": failure.code if failure else None}})
                    return
                if client_disconnected(environ):
                    jobs.cancel(job.id, "the client disconnected")
                    return
                time.sleep(STREAM_POLL_SECONDS)
        except GeneratorExit:  # the client went away mid-stream
            jobs.cancel(job.id, "the client disconnected")
            raise

    response = Response(events(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # let nginx pass events through as they come
    return response
