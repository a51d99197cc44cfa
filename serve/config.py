"""Every setting of the server: command-line flags, environment variables, defaults, validation.

Precedence: command-line flag > environment variable (``QWEN_OMNI_<NAME>``) > default. The flag names
and defaults of the reference guide (``--checkpoint-path``, ``--idle-timeout`` ...) are the public
contract; everything else is an addition.
"""

from __future__ import annotations

import argparse
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

APP_DIR = Path(__file__).resolve().parent.parent
ENV_PREFIX = "QWEN_OMNI_"
DEFAULT_CHECKPOINT = "Qwen/Qwen2.5-Omni-7B-AWQ"

# The longest segment any engine takes (Qwen3-ASR's 1,200 s); each engine's own bound is in its capabilities
# (serve.engines: 290 s for Qwen2.5-Omni, whose feature extractor truncates input at 300 s).
MAX_SEGMENT_SECONDS = 1200.0
MIN_SEGMENT_SECONDS = 1.0
MAX_NEW_TOKENS_LIMIT = 32768  # the thinker's max_position_embeddings
MAX_TEMPERATURE = 2.0
MAX_REPETITION_PENALTY = 2.0

_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: str | int) -> int:
    """'4G', '512M', '1048576' -> bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([BKMGT]?)(?:I?B)?\s*", str(value).upper())
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 4G, 512M or a number of bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _comma_list(value: str | None) -> list[str]:
    return [k.strip() for k in (value or "").split(",") if k.strip()]


def read_key_file(path: Path) -> list[str]:
    """The keys in ``path``, one per line; blank lines and ``#`` comments are skipped. Raises ValueError when
    the file cannot be read or holds no key (a server that meant to require keys must not start open)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the key file {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"the key file {str(path)!r} holds no key (one per line; # starts a comment)")
    return keys


class Settings(BaseSettings):
    """The server's configuration, one typed object."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # Model
    checkpoint_path: str = Field(DEFAULT_CHECKPOINT, description="hub id or local directory of the checkpoint")
    served_model_name: str | None = Field(None, max_length=256, description="the model's id in the OpenAI API's "
                                                                           "/v1/models (default: the checkpoint "
                                                                           "folder's name)")
    aligner_path: str | None = Field(None, description="word timestamps: a Qwen3-ForcedAligner checkpoint (hub id "
                                                      "Qwen/Qwen3-ForcedAligner-0.6B-hf, or a local folder), "
                                                      "found or downloaded like --checkpoint-path and loaded "
                                                      "beside the model on first use; off when unset")
    local_model: bool = Field(False, description="resolve the checkpoint under the local models folder, never "
                                                 "touch the network")
    flash_attn2: bool = Field(False, description="use FlashAttention 2 when installed (else SDPA)")
    low_vram: bool = Field(False, description="for 8 GB cards: keep the audio encoder and the token embeddings in "
                                              "CPU memory (the encoder visits the GPU for each prefill)")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cuda', 'cuda:N' or 'cpu'")
    awq_dequant_rows: int = Field(-1, ge=-1, description="AWQ checkpoints: inputs of at least this many rows (a "
                                                         "prefill's tokens x segments) use the dequantised weight "
                                                         "and a plain matrix product; 0 = always the int4 kernel; "
                                                         "-1 = auto (16 on a CPU, 0 on a GPU until measured there)")
    compiled_decode: bool = Field(False, description="generate with a static KV cache and a compiled decode step "
                                                     "(CUDA graphs on a GPU), compiled at load for every batch "
                                                     "size, cached on disk under --data-dir; off in --low-vram mode")
    idle_timeout: float = Field(300.0, description="seconds idle before the model is unloaded; 0 = right after "
                                                   "each request, negative = never")
    preload: bool = Field(False, description="load the model at start instead of on the first request")

    # Transcription defaults (each can be overridden per request)
    segment_duration: float = Field(60.0, gt=0, description="seconds of audio per model call")
    max_new_tokens: int = Field(8192, ge=1, le=MAX_NEW_TOKENS_LIMIT, description="token budget per segment")
    temperature: float = Field(0.1, ge=0, le=MAX_TEMPERATURE, description="sampling temperature; 0 = greedy")
    repetition_penalty: float = Field(1.1, gt=0, le=MAX_REPETITION_PENALTY, description="repetition penalty")
    opencc_config: Literal["s2t", "s2tw", "s2twp", "s2hk"] = Field(
        "s2t", description="OpenCC conversion used when enable_s2t is set")

    # Roles (scale-out): one API in front of GPU workers, sharing Redis and a storage folder
    role: Literal["all", "api", "worker"] = Field(
        "all", description="all: one process (default, SQLite); api: HTTP in front of workers; worker: one GPU's "
                           "model, pulling segments from Redis")
    redis_url: str | None = Field(None, validation_alias=AliasChoices("redis_url", "QWEN_OMNI_REDIS_URL", "REDIS_URL"),
                                  description="Redis for --role api/worker, e.g. redis://localhost:6379/0 "
                                              "[also env REDIS_URL]")
    redis_password: str | None = Field(None, validation_alias=AliasChoices("redis_password", "QWEN_OMNI_REDIS_PASSWORD",
                                                                            "REDIS_PASSWORD"),
                                       description="Redis's password (AUTH), if it is not in --redis-url; better "
                                                   "from env REDIS_PASSWORD, out of ps")
    segments_dir: Path = Field(APP_DIR / "data" / "segments", description="segment audio handed from the API to "
                                                                           "the workers (a folder all roles share)")
    segments_per_task: int = Field(0, ge=0, le=64, description="segments a worker takes at a time, generated as one "
                                                               "batch; 0 = by file length and live workers (1-8)")
    worker_name: str | None = Field(None, description="this worker's name in /health (default: host-pid)")

    # Jobs and batching
    batch_size: int = Field(0, ge=0, le=64, description="segments generated together; 0 = as many as fit in free "
                                                        "VRAM (1 on CPU)")
    concurrent_jobs: int = Field(
        32, ge=1, le=256, description="jobs transcribed at once: their segments share the model fairly, segment by "
                                      "segment, a waiting client's first (a short job never waits for a long one); "
                                      "more jobs wait in arrival order")
    queue_depth: int = Field(32, ge=1, le=10000, description="jobs that may wait for a place among the running "
                                                             "ones; more get 503 with Retry-After")
    data_dir: Path = Field(APP_DIR / "data", description="where the job database (jobs.sqlite3) lives")
    job_retention_hours: float = Field(168.0, gt=0, description="hours finished jobs and their results are kept")
    output_retention_hours: float = Field(0.0, ge=0, description="hours saved transcripts in outputs/ are kept "
                                                                 "(0 = forever)")

    # Security
    api_key: str | None = Field(None, description="require this key (comma-separate several) as 'Authorization: "
                                                  "Bearer KEY' or 'X-API-Key: KEY'; /health stays open. Each "
                                                  "key sees only the jobs it created")
    api_key_file: Path | None = Field(None, description="more keys like --api-key, one per line (blank lines and "
                                                        "# comments ignored), kept out of ps and the environment")
    admin_key: str | None = Field(None, description="keys (comma-separated) that are accepted like --api-key and "
                                                    "also see and cancel every job")
    rate_limit: str | None = Field(None, description="per-client request limit, e.g. '60/minute' or "
                                                     "'10/second;500/hour' (off by default)")

    # HTTP
    server: Literal["werkzeug", "gunicorn"] = Field(
        "werkzeug", description="HTTP server: werkzeug (development) or gunicorn (production; the Docker image's)")
    threads: int | None = Field(None, ge=2, le=1024, description="gunicorn request threads (one process, one "
                                                                 "model); default: queue depth + concurrent jobs + 32")
    graceful_timeout: float = Field(300.0, ge=0, description="seconds a shutdown gives running synchronous "
                                                              "requests to finish (async jobs pause and resume "
                                                              "at the next start)")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all interfaces)")
    port: int = Field(5000, ge=1, le=65535, description="port to listen on")
    max_upload_size: int = Field(4 * 1024**3, gt=0, description="largest accepted request body, e.g. 4G, 512M")
    client_timeout: float = Field(30.0, gt=0, le=3600, description="seconds a client may send nothing while its "
                                                                   "request arrives: then 408, and what it sent "
                                                                   "is deleted")
    min_upload_rate: int = Field(1024, ge=0, description="bytes per second a request must bring over each "
                                                         "window of --client-timeout seconds while it arrives "
                                                         "(e.g. 1K; 0 = no minimum): slower ones get 408")
    cors_origins: str = Field("", description="other web origins allowed to call the API from a browser "
                                              "(comma-separated, e.g. http://localhost:8080); empty: none, the "
                                              "server's own page needs none. Never with credentials")
    allowed_hosts: str = Field("", description="Host names requests may be addressed to (comma-separated; * = "
                                               "any, e.g. behind a proxy that checks Host itself); empty: this "
                                               "machine's names, any IP address and localhost. Others get 403 "
                                               "(DNS rebinding)")

    # Folders (the guide's layout under the app directory)
    models_dir: Path = Field(APP_DIR / "Qwen", description="where --local-model looks for checkpoints")
    inputs_dir: Path = Field(APP_DIR / "inputs", description="uploads while they are processed")
    temp_dir: Path = Field(APP_DIR / "temp", description="per-request scratch files")
    outputs_dir: Path = Field(APP_DIR / "outputs", description="saved transcripts")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log verbosity")

    @field_validator("segment_duration")
    @classmethod
    def _segment_within_cap(cls, value: float) -> float:
        if not MIN_SEGMENT_SECONDS <= value <= MAX_SEGMENT_SECONDS:
            raise ValueError(f"must be between {MIN_SEGMENT_SECONDS:g} and {MAX_SEGMENT_SECONDS:g} seconds")
        return value

    @field_validator("max_upload_size", "min_upload_rate", mode="before")
    @classmethod
    def _parse_size(cls, value: str | int) -> int:
        return parse_size(value)

    @field_validator("api_key", "api_key_file", "admin_key", "rate_limit", mode="before")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value if value is None or str(value).strip() else None

    @field_validator("api_key_file")
    @classmethod
    def _key_file_has_keys(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_key_file(value)  # a bad file stops the start here, not at the first request
        return value

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            from limits import parse_many

            try:
                parse_many(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit ({exc}); use e.g. 60/minute") from None
        return value

    @model_validator(mode="after")
    def _role_needs_redis(self) -> Settings:
        # --role all (one process, SQLite) does not use Redis even when REDIS_URL happens to be set.
        if self.role in ("api", "worker") and not self.redis_url:
            raise ValueError(f"--role {self.role} needs --redis-url (or REDIS_URL)")
        return self

    @property
    def request_threads(self) -> int:
        """Enough threads for every waiting synchronous client plus room for /health and status polls."""
        # A synchronous client holds a thread while its job waits and while it runs.
        return self.threads or self.queue_depth + self.concurrent_jobs + 32

    @cached_property
    def user_keys(self) -> list[str]:
        """Keys that see their own jobs: --api-key and the lines of --api-key-file (read once)."""
        from_file = read_key_file(self.api_key_file) if self.api_key_file is not None else []
        return _comma_list(self.api_key) + from_file

    @property
    def admin_keys(self) -> list[str]:
        """Keys that see every job."""
        return _comma_list(self.admin_key)

    @property
    def api_keys(self) -> list[str]:
        """Every accepted key, user and admin: when there is one, every request but /health needs a key."""
        return self.user_keys + self.admin_keys

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: str) -> str:
        return str(value).upper()


_BOOL_FLAGS = ("local_model", "flash_attn2", "low_vram", "compiled_decode", "preload")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen2_5_omni_awq.py",
        description="Qwen2.5-Omni transcription server (Flask). Upload audio, get text, JSON or SRT.",
        epilog=f"Every flag can also be set by an environment variable {ENV_PREFIX}<FLAG NAME> "
               f"(e.g. {ENV_PREFIX}IDLE_TIMEOUT=600, {ENV_PREFIX}FLASH_ATTN2=true). "
               "Flags win over the environment.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        help_text = f"{field.description} [env {env}]"
        if name in _BOOL_FLAGS:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=name.split("_")[-1].upper(),
                                help=f"{help_text} (default: {field.default})")
    return parser


def parse_args(argv: list[str] | None = None) -> Settings:
    """Settings from the command line over the environment; exits with a usage error on bad values."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    try:
        return Settings(**args)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}" for err in exc.errors()
        )
        parser.error(problems)
        raise  # unreachable: parser.error exits
