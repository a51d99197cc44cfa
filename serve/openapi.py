"""GET /openapi.json: the OpenAPI 3.1 document, generated from the app's real routes.

apispec's Flask plugin walks the URL map; each route's docstring (after ``---``) describes its
operations; the request and response bodies are pydantic models, turned into JSON Schema by pydantic.
"""

from __future__ import annotations

from typing import Any, Literal

from apispec import APISpec
from apispec_webframeworks.flask import FlaskPlugin
from flask import Blueprint, Flask, current_app, jsonify
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from . import __version__
from .config import MAX_NEW_TOKENS_LIMIT, MAX_SEGMENT_SECONDS, MIN_SEGMENT_SECONDS
from .languages import ALL_LANGUAGES, LANGUAGES
from .params import OPENCC_CONFIGS, TASKS

JobStatusName = Literal["processing", "completed", "failed", "cancelled"]


class Error(BaseModel):
    """Every native error."""

    status: Literal["error"]
    error: str = Field(description="what went wrong")
    code: str = Field(description="a machine-readable code, e.g. invalid_parameter, unsupported_media")
    param: str | None = Field(None, description="the request field at fault, when there is one")


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """Errors under /v1/, in OpenAI's shape."""

    error: OpenAIErrorBody


class Worker(BaseModel):
    """A live GPU worker (scale-out mode), from its last heartbeat."""

    name: str
    host: str | None
    device: str | None = Field(description='"cpu" or "cuda:<index> <GPU name>"')
    checkpoint: str | None
    idle_timeout: float | None
    model_loaded: bool
    model_state: Literal["unloaded", "loading", "loaded"] | None
    model_error: str | None
    current_task: str | None
    batch_size: int | None = Field(description="segments its model generates at once (known once it has loaded)")
    gpu_memory_allocated_gb: float
    gpu_memory_reserved_gb: float
    last_seen: str | None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    model_loaded: bool
    gpu_available: bool
    gpu_memory_allocated_gb: float
    gpu_memory_reserved_gb: float
    timestamp: str
    model_state: Literal["unloaded", "loading", "loaded"]
    model_error: str | None
    checkpoint: str
    idle_timeout: float
    queue_depth: int
    queue_capacity: int
    running_job: str | None
    running_jobs: list[str]
    role: Literal["all", "api"] = Field(description="all: one process; api: in front of scale-out workers")
    redis: str | None = Field(None, description='scale-out: "ok", or why Redis is unreachable')
    workers: list[Worker] | None = Field(None, description="scale-out: the live workers")
    store: str = Field(description='the job store: "ok", or why it cannot be written (then status is unavailable)')
    shutting_down: bool = Field(description="the server is stopping: it takes no new work")
    engine: EngineCapabilities | None = Field(description="null while the checkpoint is not downloaded and its "
                                                         "id is not a published one")
    aligner: AlignerState


class EngineCapabilities(BaseModel):
    """The engine the checkpoint's config names (serve.engines), and what it can be asked."""

    family: str = Field(description="Qwen2.5-Omni or Qwen3-ASR")
    languages: list[str] = Field(description="the ISO codes a request may name")
    translates: bool = Field(description="task=translate and /v1/audio/translations")
    names_language: bool = Field(description="the model reports the language it heard")
    max_segment_seconds: float
    temperature: float = Field(description="the server's default: its flag, else what the model's authors publish")
    repetition_penalty: float
    compiled_decode: bool = Field(description="--compiled-decode applies")
    low_vram: bool = Field(description="--low-vram applies")


class AlignerState(BaseModel):
    """The forced aligner for word timestamps (--aligner-path); in the scale-out API role, configured only."""

    configured: bool
    loaded: bool | None = None
    memory_gb: float | None = None
    error: str | None = Field(None, description="why the last load failed (retried a minute later)")


class TimedWord(BaseModel):
    word: str
    start: float = Field(description="seconds in the file")
    end: float


class Segment(BaseModel):
    id: int
    start: float = Field(description="seconds: where the speech of this segment starts")
    end: float
    text: str
    words: list[TimedWord] | None = Field(None, description="the words with their times (word_timestamps)")


class Transcription(BaseModel):
    """The guide's JSON answer, plus segments."""

    status: Literal["success"]
    transcription: str
    output_file: str | None = Field(description="the saved transcript, in the outputs folder")
    timestamp: str
    job_id: str
    filename: str
    duration: float = Field(description="seconds of audio")
    language: str | None = Field(description="the ISO code the request named, else the one the model heard or the "
                                             "transcript reads as (null when there is too little text to tell); a "
                                             "translation's target language")
    segments: list[Segment]
    task: Literal["translate"] | None = Field(None, description="present on translations")
    target_language: str | None = Field(None, description="the language a translation is in")
    word_timestamps_note: str | None = Field(None, description="why some segments have no word times")
    output_error: str | None = Field(None, description="why output_file could not be written (a full disk); the "
                                                       "transcript is still here and in GET /result")


class Progress(BaseModel):
    segments_done: int
    segments_total: int | None
    audio_seconds_done: float
    audio_seconds_total: float | None
    eta_seconds: float | None = None


class Job(BaseModel):
    """An async job, with the guide's fields for its status."""

    job_id: str
    status: JobStatusName
    filename: str
    created_at: str
    progress: Progress
    stage: Literal["queued", "running"] | None = None
    started_at: str | None = None
    partial_transcription: str | None = Field(None, description="the transcript so far, while processing")
    transcription: str | None = None
    output_file: str | None = None
    output_error: str | None = Field(None, description="why output_file could not be written (a full disk)")
    completed_at: str | None = None
    duration: float | None = None
    error: str | None = None
    code: str | None = None
    cancel_requested: bool | None = None
    status_url: str | None = None


class JobList(BaseModel):
    jobs: list[Job]
    limit: int
    offset: int


class TranscribeForm(BaseModel):
    """The multipart form of every POST /transcribe… (the guide's fields and the additions); all optional but file."""

    file: bytes = Field(json_schema_extra={"format": "binary", "type": "string"})
    segment_duration: float = Field(None, ge=MIN_SEGMENT_SECONDS, le=MAX_SEGMENT_SECONDS,  # type: ignore[assignment]
                                    description="at most 290 with Qwen2.5-Omni, 1200 with Qwen3-ASR")
    max_new_tokens: int = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)  # type: ignore[assignment]
    temperature: float = Field(None, ge=0, le=2)  # type: ignore[assignment]
    repetition_penalty: float = Field(None, gt=0, le=2)  # type: ignore[assignment]
    enable_s2t: Literal["true", "false", "1", "0", "yes", "no", "on", "off"] = None  # type: ignore[assignment]
    language: Literal["auto", *ALL_LANGUAGES] = None  # type: ignore[valid-type, assignment]
    prompt: str = Field(None, max_length=1000)  # type: ignore[assignment]
    opencc: Literal[OPENCC_CONFIGS] = None  # type: ignore[valid-type, assignment]
    word_timestamps: Literal["true", "false", "1", "0", "yes", "no", "on", "off"] = None  # type: ignore[assignment]
    task: Literal[TASKS] = Field(None, description="translate: into target_language, where the model can (Qwen2.5-"  # type: ignore[valid-type, assignment]
                                 "Omni; Qwen3-ASR answers 400); no word timestamps")
    target_language: Literal["auto", *LANGUAGES] = Field(None, description="with task=translate; default (and "  # type: ignore[valid-type, assignment]
                                                         "auto) en")


class OpenAITranscribeForm(BaseModel):
    file: bytes = Field(json_schema_extra={"format": "binary", "type": "string"})
    model: str = Field(min_length=1, max_length=256)
    language: Literal["auto", *ALL_LANGUAGES] = None  # type: ignore[valid-type, assignment]
    prompt: str = Field(None, max_length=1000)  # type: ignore[assignment]
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = None  # type: ignore[assignment]
    temperature: float = Field(None, ge=0, le=2)  # type: ignore[assignment]
    stream: Literal["true", "false"] = None  # type: ignore[assignment]
    timestamp_granularities: list[Literal["segment", "word"]] = Field(  # type: ignore[assignment]
        None, alias="timestamp_granularities[]", description="word: needs --aligner-path and verbose_json (or srt/vtt)")


class DurationUsage(BaseModel):
    type: Literal["duration"]
    seconds: float = Field(description="duration of the input audio")


class OpenAITranscription(BaseModel):
    text: str
    usage: DurationUsage


class VerboseSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int] = Field(None, description="the generated token ids")  # type: ignore[assignment]
    avg_logprob: float = Field(None, description="their mean log-probability")  # type: ignore[assignment]
    no_speech_prob: float = Field(None, description="the model's probability of ending at once")  # type: ignore[assignment]
    temperature: float
    compression_ratio: float


class OpenAIVerboseTranscription(BaseModel):
    task: Literal["transcribe"]
    language: str
    duration: float
    text: str
    segments: list[VerboseSegment]
    words: list[TimedWord] | None = None
    word_timestamps_note: str | None = None
    usage: DurationUsage


class OpenAITranslateForm(BaseModel):
    file: bytes = Field(json_schema_extra={"format": "binary", "type": "string"})
    model: str = Field(min_length=1, max_length=256)
    prompt: str = Field(None, max_length=1000)  # type: ignore[assignment]
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = None  # type: ignore[assignment]
    temperature: float = Field(None, ge=0, le=2)  # type: ignore[assignment]
    language: Literal["auto", *ALL_LANGUAGES] = Field(None, description="the spoken language, if known (an "  # type: ignore[valid-type, assignment]
                                                      "addition to OpenAI's form)")


class OpenAITranslation(BaseModel):
    text: str


class OpenAIVerboseTranslation(BaseModel):
    task: Literal["translate"]
    language: str = Field(description="the language of the text: english")
    duration: float
    text: str
    segments: list[VerboseSegment]


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


SCHEMAS = (Error, OpenAIError, Health, Transcription, Job, JobList, TranscribeForm, OpenAITranscribeForm,
           OpenAITranscription, OpenAIVerboseTranscription, OpenAITranslateForm, OpenAITranslation,
           OpenAIVerboseTranslation, Model, ModelList)

_ERRORS = {
    "BadRequest": (400, "a bad parameter, or no file"),
    "Unauthorized": (401, "an API key is required"),
    "NotFound": (404, "no such job, or it belongs to another API key"),
    "Conflict": (409, "the job is not in a state for this (not finished, already finished, or cancelled)"),
    "TooLarge": (413, "the upload is over the size limit"),
    "Unsupported": (415, "the file cannot be decoded as audio"),
    "RateLimited": (429, "over the rate limit"),
    "ServerError": (500, "an unexpected failure (details only in the server log)"),
    "Unavailable": (503, "the model cannot be loaded, the queue is full, the server is stopping, the job store "
                         "cannot be written, or (scale-out) Redis is unreachable or no worker is alive"),
    "InsufficientStorage": (507, "the server's disk is full: the upload (or the decoding's scratch files) did "
                                 "not fit"),
}


def build_spec(app: Flask) -> dict[str, Any]:
    spec = APISpec(
        title="Qwen2.5-Omni transcription server",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[FlaskPlugin()],
        info={"description": "Transcribes audio with Qwen2.5-Omni. Native endpoints follow the AWQ service guide; "
                             "/v1/ is OpenAI-compatible."},
    )
    _, definitions = models_json_schema([(model, "validation") for model in SCHEMAS],
                                        ref_template="#/components/schemas/{model}")
    for name, schema in definitions["$defs"].items():
        spec.components.schema(name, schema)
    for name, (_status, description) in _ERRORS.items():
        native = {"description": description, "content": {"application/json": {"schema": "Error"}}}
        openai = {"description": description, "content": {"application/json": {"schema": "OpenAIError"}}}
        spec.components.response(name, native)
        spec.components.response(f"OpenAI{name}", openai)
    spec.components.parameter("JobId", "path", {"name": "job_id", "required": True, "schema": {"type": "string"}})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    for endpoint, view in app.view_functions.items():
        if endpoint.endswith(".static") or not (view.__doc__ and "---" in view.__doc__):
            continue
        spec.path(view=view, app=app)
    return spec.to_dict()


bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_document():  # type: ignore[no-untyped-def]
    """The OpenAPI document.
    ---
    get:
      summary: This API, as OpenAPI 3.1
      responses:
        200:
          description: the document
          content:
            application/json:
              schema: {type: object}
    """
    if "openapi_document" not in current_app.extensions:
        current_app.extensions["openapi_document"] = build_spec(current_app)
    return jsonify(current_app.extensions["openapi_document"])
