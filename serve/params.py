"""Per-request transcription parameters: parse and validate the guide's form fields."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import (
    APP_DIR,
    MAX_NEW_TOKENS_LIMIT,
    MAX_REPETITION_PENALTY,
    MAX_SEGMENT_SECONDS,
    MAX_TEMPERATURE,
    MIN_SEGMENT_SECONDS,
    Settings,
)
from .engines import UNDECLARED, Capabilities, Problem, declared_spec
from .errors import InvalidParameter
from .languages import ALL_LANGUAGES, LANGUAGES
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


def _refuse(problem: Problem | None) -> None:
    if problem is not None:
        param, message = problem
        raise InvalidParameter(message, param=param)


def parse_language(form: Mapping[str, str], defaults: Settings | None = None, name: str = "language") -> str:
    """An ISO code of serve.languages (or auto) that the server's engine takes."""
    served = capabilities(defaults) if defaults is not None else UNDECLARED
    raw = _given(form, name)
    if raw is None:
        return "auto"
    language = raw.lower()
    if language != "auto" and language not in ALL_LANGUAGES:
        named = sorted(served.languages if name == "language" else LANGUAGES)  # translations: Omni's instruction's
        raise InvalidParameter(f"{name} must be one of auto, {', '.join(named)} (got {raw[:40]!r})", param=name)
    _refuse(served.language_problem(language, name))
    return language


def _decoding_defaults(settings: Settings) -> tuple[float, float]:
    """The server's temperature and repetition penalty: its flags when given, else what the engine's authors
    publish (the guide's 0.1 and 1.1 for Qwen2.5-Omni; greedy without a penalty for Qwen3-ASR)."""
    served = capabilities(settings)
    given = settings.model_fields_set
    return (settings.temperature if "temperature" in given else served.temperature,
            settings.repetition_penalty if "repetition_penalty" in given else served.repetition_penalty)


_DECLARED: dict[tuple[str, Path], Capabilities] = {}  # what each checkpoint was found to be (a config does not change)


def declared_capabilities(settings: Settings) -> Capabilities | None:
    """What the server's engine can do, as its checkpoint's config (read once, local or in the hub cache) or
    its published hub id says; None while neither does."""
    key = (settings.checkpoint_path, Path(settings.models_dir))
    if key not in _DECLARED:
        spec = declared_spec(settings.checkpoint_path, settings.models_dir, APP_DIR)
        if spec is None:
            return None
        _DECLARED[key] = spec.capabilities
    return _DECLARED[key]


def capabilities(settings: Settings) -> Capabilities:
    """What requests may ask of the server's engine: its declared capabilities, else what any engine can do
    (the engine refuses the rest once loaded)."""
    return declared_capabilities(settings) or UNDECLARED


def effective_engine(settings: Settings) -> dict[str, Any] | None:
    """The engine as /health shows it: its declared capabilities with the server's own decoding defaults."""
    declared = declared_capabilities(settings)
    if declared is None:
        return None
    temperature, repetition_penalty = _decoding_defaults(settings)
    return {**declared.to_dict(), "temperature": temperature, "repetition_penalty": repetition_penalty}


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


TASKS = ("transcribe", "translate")
# The forced aligner takes up to 300 s per call: segments with word times stay clear of it.
ALIGNER_MAX_SEGMENT_SECONDS = 290.0


def parse_task(form: Mapping[str, str], defaults: Settings, *, task: str | None = None) -> tuple[str, str | None]:
    """(task, target language): ``task=translate`` with a ``target_language`` (default en) where the engine
    translates; ``task`` given by the route (the OpenAI translations endpoint) wins over the form."""
    forced = task is not None
    task = task or _choice(form, "task", TASKS, "transcribe")
    if task != "translate":
        if _given(form, "target_language") is not None:
            raise InvalidParameter("target_language needs task=translate", param="target_language")
        return "transcribe", None
    target = parse_language(form, None, name="target_language")
    target = "en" if target == "auto" else target
    # A route that translates (OpenAI's) has no task field to blame.
    _refuse(capabilities(defaults).translation_problem(target, None if forced else "task"))
    return task, target


def parse_params(form: Mapping[str, str], defaults: Settings, *, align_by_default: bool = False,
                 words_asked: bool | None = None, task: str | None = None) -> TranscriptionParams:
    """The request's parameters, each falling back to the server's default when absent or empty."""
    task, target_language = parse_task(form, defaults, task=task)
    enable_s2t = _boolean(form, "enable_s2t", False)
    if task == "translate":
        # The aligner times the spoken words, not their translation.
        if words_asked or _boolean(form, "word_timestamps", False):
            raise InvalidParameter("word timestamps are not available for translations",
                                   param="timestamp_granularities[]" if words_asked else "word_timestamps")
        align_words = word_timestamps = False
    else:
        align_words, word_timestamps = parse_word_timestamps(form, defaults, align_by_default=align_by_default,
                                                             asked=words_asked)
    segment_duration = _number(form, "segment_duration", defaults.segment_duration, MIN_SEGMENT_SECONDS,
                               MAX_SEGMENT_SECONDS)
    _refuse(capabilities(defaults).segment_problem(segment_duration))
    if align_words and segment_duration > ALIGNER_MAX_SEGMENT_SECONDS:
        if word_timestamps:
            raise InvalidParameter(f"word timestamps need segments of at most {ALIGNER_MAX_SEGMENT_SECONDS:g} s "
                                   "(the forced aligner's limit)", param="segment_duration")
        align_words = False  # subtitles of segments this long keep their proportional timing
    opencc = _choice(form, "opencc", OPENCC_CONFIGS, defaults.opencc_config if enable_s2t else None)
    temperature, repetition_penalty = _decoding_defaults(defaults)
    return TranscriptionParams(
        segment_duration=segment_duration,
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
        task=task,
        target_language=target_language,
    )


def server_defaults_problem(settings: Settings) -> str | None:
    """What is wrong with the server's own defaults for its engine, where its checkpoint says which one
    (the loader checks again once the model is there)."""
    return capabilities(settings).segment_flag_problem(settings.segment_duration)
