"""Per-request transcription parameters: parse and validate the guide's form fields."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from .checkpoint import declares_qwen3_asr
from .config import (
    APP_DIR,
    MAX_NEW_TOKENS_LIMIT,
    MAX_REPETITION_PENALTY,
    MAX_SEGMENT_SECONDS,
    MAX_TEMPERATURE,
    MIN_SEGMENT_SECONDS,
    Settings,
)
from .errors import InvalidParameter
from .languages import LANGUAGES, QWEN3_ASR_LANGUAGES
from .transcriber import TranscriptionParams

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


def _given(form: Mapping[str, str], name: str) -> str | None:
    value = form.get(name)
    if value is None or not str(value).strip():
        return None
    return str(value).strip()


def _number(form: Mapping[str, str], name: str, default: float, low: float, high: float,
            *, low_inclusive: bool = True) -> float:
    raw = _given(form, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    low_ok = value >= low if low_inclusive else value > low
    if not (math.isfinite(value) and low_ok and value <= high):
        bound = "from" if low_inclusive else "above"
        raise InvalidParameter(f"{name} must be a number {bound} {low:g} to {high:g} (got {raw[:40]!r})",
                               param=name)
    return value


def _integer(form: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _given(form, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameter(f"{name} must be a whole number from {low} to {high} (got {raw[:40]!r})",
                               param=name) from None
    if not low <= value <= high:
        raise InvalidParameter(f"{name} must be a whole number from {low} to {high} (got {value})", param=name)
    return value


def _boolean(form: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _given(form, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidParameter(f"{name} must be true or false (also 1/0, yes/no, on/off; got {raw[:40]!r})",
                           param=name)


OPENCC_CONFIGS = ("s2t", "s2tw", "s2twp", "s2hk", "t2s")
MAX_PROMPT_CHARS = 1000


def _choice(form: Mapping[str, str], name: str, choices: tuple[str, ...] | list[str], default: str | None
            ) -> str | None:
    raw = _given(form, name)
    if raw is None:
        return default
    value = raw.lower()
    if value not in choices:
        raise InvalidParameter(f"{name} must be one of {', '.join(choices)} (got {raw[:40]!r})", param=name)
    return value


def parse_language(form: Mapping[str, str], defaults: Settings | None = None) -> str:
    language = _choice(form, "language", ["auto", *LANGUAGES], "auto") or "auto"
    if language != "auto" and language not in QWEN3_ASR_LANGUAGES and defaults is not None and \
            _serves_qwen3_asr(defaults):
        raise InvalidParameter(f"this server's model, Qwen3-ASR, does not transcribe {LANGUAGES[language]}: name "
                               f"another language, or auto", param="language")
    return language


def _decoding_defaults(settings: Settings) -> tuple[float, float]:
    """The server's temperature and repetition penalty. The guide's (0.1, 1.1) are Qwen2.5-Omni's; for
    Qwen3-ASR, what its generation config says (greedy, no penalty), unless the server was given its own."""
    temperature, penalty = settings.temperature, settings.repetition_penalty
    if {"temperature", "repetition_penalty"} - settings.model_fields_set and _serves_qwen3_asr(settings):
        temperature = temperature if "temperature" in settings.model_fields_set else 0.0
        penalty = penalty if "repetition_penalty" in settings.model_fields_set else 1.0
    return temperature, penalty


_FAMILY: dict[tuple[str, Path], bool] = {}  # what each checkpoint was found to be (a config does not change)


def _serves_qwen3_asr(settings: Settings) -> bool:
    """Whether the server's checkpoint is Qwen3-ASR (read once from its config, local or in the hub cache;
    before a first download, the default family: the engine then refuses what Qwen3-ASR cannot do)."""
    key = (settings.checkpoint_path, Path(settings.models_dir))
    if key not in _FAMILY:
        found = declares_qwen3_asr(settings.checkpoint_path, settings.models_dir, APP_DIR)
        if found is None:
            return False
        _FAMILY[key] = found
    return _FAMILY[key]


def parse_prompt(form: Mapping[str, str]) -> str:
    prompt = _given(form, "prompt") or ""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidParameter(f"prompt must be at most {MAX_PROMPT_CHARS} characters", param="prompt")
    return prompt


def parse_word_timestamps(form: Mapping[str, str], defaults: Settings, *, align_by_default: bool,
                          asked: bool | None = None) -> tuple[bool, bool]:
    """(align the words, show them): ``word_timestamps`` (or ``asked``, the OpenAI API's granularities) asks
    for both and needs the aligner; without it, words are aligned where the answer's times use them
    (``align_by_default``: subtitles, async jobs) when the server has an aligner."""
    wanted = _boolean(form, "word_timestamps", False) if _given(form, "word_timestamps") is not None else asked
    if wanted and not defaults.aligner_path:
        name = "timestamp_granularities[]" if asked else "word_timestamps"
        raise InvalidParameter("word timestamps need the forced aligner: start the server with --aligner-path "
                               "(e.g. Qwen/Qwen3-ForcedAligner-0.6B-hf; env QWEN_OMNI_ALIGNER_PATH)", param=name)
    if wanted is None:
        return bool(defaults.aligner_path) and align_by_default, False
    return wanted, wanted


def parse_params(form: Mapping[str, str], defaults: Settings, *, align_by_default: bool = False,
                 words_asked: bool | None = None) -> TranscriptionParams:
    """The request's parameters, each falling back to the server's default when absent or empty."""
    enable_s2t = _boolean(form, "enable_s2t", False)
    align_words, word_timestamps = parse_word_timestamps(form, defaults, align_by_default=align_by_default,
                                                         asked=words_asked)
    opencc = _choice(form, "opencc", OPENCC_CONFIGS, defaults.opencc_config if enable_s2t else None)
    temperature, repetition_penalty = _decoding_defaults(defaults)
    return TranscriptionParams(
        segment_duration=_number(form, "segment_duration", defaults.segment_duration,
                                 MIN_SEGMENT_SECONDS, MAX_SEGMENT_SECONDS),
        max_new_tokens=_integer(form, "max_new_tokens", defaults.max_new_tokens, 1, MAX_NEW_TOKENS_LIMIT),
        temperature=_number(form, "temperature", temperature, 0.0, MAX_TEMPERATURE),
        repetition_penalty=_number(form, "repetition_penalty", repetition_penalty, 0.0,
                                   MAX_REPETITION_PENALTY, low_inclusive=False),
        enable_s2t=enable_s2t,
        language=parse_language(form, defaults),
        prompt=parse_prompt(form),
        opencc=opencc,
        align_words=align_words,
        word_timestamps=word_timestamps,
    )
