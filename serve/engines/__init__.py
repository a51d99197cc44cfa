"""Speech recognisers as plug-ins: the interface every engine implements, what each declares it can do, and
which one a checkpoint's config picks.

An engine loads from a checkpoint folder, generates a batch of 16 kHz segments with a request's
:class:`~serve.generation.GenerationOptions`, reports its device, memory and the batch size that fits, and
closes. Everything above it (the batch runner, the model manager, jobs, routes, formats, the scale-out
workers) sees only this interface, and the declared :class:`Capabilities` where a request asks for more
than transcription in a common language.

This module is free of torch: the HTTP layer and the scale-out API role read capabilities from here before
any model is loaded; an engine's own module (torch, transformers) is imported only where a model loads.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..checkpoint import checkpoint_config
from ..generation import GenerationOptions, SegmentResult
from ..languages import ALL_LANGUAGES, LANGUAGES, QWEN2_5_OMNI_LANGUAGES, QWEN3_ASR_LANGUAGES

Problem = tuple[str | None, str]  # (the form field at fault, if one; what to tell the client)


class EngineLoadError(Exception):
    """The checkpoint cannot be loaded by the engine its config names (or names none this server runs)."""


@dataclass(frozen=True)
class Capabilities:
    """What an engine can be asked, known from the checkpoint's config alone (before the model loads)."""

    family: str  # the model family as users know it: "Qwen2.5-Omni", "Qwen3-ASR"
    languages: frozenset[str]  # the ISO codes (serve.languages) a request may name
    translates: bool  # speech translation (task=translate, /v1/audio/translations)
    names_language: bool  # reports the language it heard (else the server guesses it from the text)
    max_segment_seconds: float  # the longest segment one call takes
    temperature: float  # the decoding its authors publish, the server's default unless given its own
    repetition_penalty: float
    compiled_decode: bool  # the server's --compiled-decode and --low-vram apply
    low_vram: bool

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "languages": sorted(self.languages)}

    # What a request asks that the engine cannot do, as (form field, message): the server checks before the
    # model loads, the engine again (for a checkpoint whose family the server could not know yet).

    def language_problem(self, language: str, field: str = "language") -> Problem | None:
        if language == "auto" or language in self.languages:
            return None
        name = ALL_LANGUAGES.get(language, repr(language))
        return field, f"this server's model, {self.family}, does not take {name} ({language}): name another " \
                      "language, or auto"

    def translation_problem(self, target_language: str | None, field: str | None = "task") -> Problem | None:
        if target_language is None:
            return None
        if not self.translates:
            return field, f"this server's model, {self.family}, transcribes only and cannot translate: serve " \
                          "Qwen2.5-Omni for translation"
        if target_language not in LANGUAGES:  # the translation instruction names the language
            return "target_language", f"{self.family} does not translate into {target_language!r}"
        return self.language_problem(target_language, "target_language")

    def segment_problem(self, seconds: float) -> Problem | None:
        if seconds <= self.max_segment_seconds:
            return None
        return "segment_duration", f"segment_duration must be at most {self.max_segment_seconds:g} s with " \
                                   f"{self.family} (got {seconds:g})"

    def segment_flag_problem(self, seconds: float) -> str | None:
        """What is wrong with a server's --segment-duration for this engine."""
        if seconds <= self.max_segment_seconds:
            return None
        return f"--segment-duration {seconds:g}: {self.family} takes segments of at most {self.max_segment_seconds:g} s"

    def request_problem(self, options: GenerationOptions, longest_seconds: float = 0.0) -> Problem | None:
        """The first thing of a batch's options (and its longest segment) the engine cannot do, if any."""
        # A second of slack: the cutter's segments end at most segment_duration in, give or take a sample.
        too_long = longest_seconds > self.max_segment_seconds + 1.0
        return (self.translation_problem(options.target_language) or self.language_problem(options.language)
                or (self.segment_problem(longest_seconds) if too_long else None))


class SpeechEngine(Protocol):
    """A loaded speech recogniser. One instance owns its model; one thread (the batch runner) calls it."""

    @classmethod
    def load(cls, checkpoint: Path, *, device: str = "auto", flash_attn2: bool = False, low_vram: bool = False,
             awq_dequant_rows: int = -1) -> SpeechEngine:
        """Load the checkpoint folder (options that do not apply to the family are ignored with a warning)."""

    def generate_batch(self, batch: list[np.ndarray], options: GenerationOptions) -> list[SegmentResult]:
        """One result per segment, generated together; EngineOutOfMemory when the batch does not fit (its
        memory released, so a smaller batch may)."""

    def suggest_batch_size(self, segment_seconds: float, max_new_tokens: int, limit: int = 16, *,
                           compiled: bool = False, reserve_bytes: int = 0) -> int:
        """How many segments of this length fit in the free memory of the device, ``reserve_bytes`` set aside."""

    def compile_decode(self, batch_size: int, segment_seconds: float, max_new_tokens: int, *,
                       cache_dir: Path | None = None) -> float:
        """Prepare a faster decode path for this shape (seconds spent; 0 where the family has none)."""

    @property
    def device(self) -> Any:
        """The torch device the model runs on."""

    def memory_bytes(self) -> int:
        """Bytes of the model's weights and buffers on its devices."""

    def close(self) -> None:
        """Drop the model and give its memory back."""


@dataclass(frozen=True)
class EngineSpec:
    """An engine as the registry knows it: which configs it serves, where its code is, what it can do."""

    capabilities: Capabilities
    model_types: tuple[str, ...]
    module: str  # imported on first load only (torch, transformers)
    class_name: str
    # When set, the config's architectures must name one: the forced aligner shares Qwen3-ASR's model_type.
    architectures: tuple[str, ...] = ()

    def serves(self, config: dict[str, Any]) -> bool:
        if config.get("model_type") not in self.model_types:
            return False
        return not self.architectures or bool(set(self.architectures) & set(config.get("architectures") or ()))

    def engine_class(self) -> type[SpeechEngine]:
        return getattr(importlib.import_module(self.module), self.class_name)


# The guide's bound for Qwen2.5-Omni: its Whisper feature extractor truncates input at 300 s.
OMNI_MAX_SEGMENT_SECONDS = 290.0

QWEN2_5_OMNI = EngineSpec(
    Capabilities(family="Qwen2.5-Omni", languages=QWEN2_5_OMNI_LANGUAGES, translates=True, names_language=False,
                 max_segment_seconds=OMNI_MAX_SEGMENT_SECONDS, temperature=0.1, repetition_penalty=1.1,
                 compiled_decode=True, low_vram=True),
    model_types=("qwen2_5_omni", "qwen2_5_omni_thinker"), module="serve.engines.qwen2_5_omni",
    class_name="QwenOmniEngine")
QWEN3_ASR = EngineSpec(
    # Greedy without a repetition penalty, as its generation config says; up to 1,200 s per call.
    Capabilities(family="Qwen3-ASR", languages=QWEN3_ASR_LANGUAGES, translates=False, names_language=True,
                 max_segment_seconds=1200.0, temperature=0.0, repetition_penalty=1.0,
                 compiled_decode=False, low_vram=False),
    model_types=("qwen3_asr",), architectures=("Qwen3ASRForConditionalGeneration",),
    module="serve.engines.qwen3_asr", class_name="Qwen3AsrEngine")
ENGINES = (QWEN2_5_OMNI, QWEN3_ASR)
DEFAULT_ENGINE = QWEN2_5_OMNI  # the guide's model

# The published checkpoints by hub id: their engine is known before they are downloaded.
PUBLISHED = {"Qwen/Qwen2.5-Omni-7B-AWQ": QWEN2_5_OMNI, "Qwen/Qwen2.5-Omni-7B": QWEN2_5_OMNI,
             "Qwen/Qwen2.5-Omni-3B": QWEN2_5_OMNI, "Qwen/Qwen3-ASR-1.7B-hf": QWEN3_ASR,
             "Qwen/Qwen3-ASR-0.6B-hf": QWEN3_ASR}

# What a server whose checkpoint says nothing yet (not downloaded, not a published id) may be asked: what
# any engine can do. The engine refuses the rest once it is loaded (Capabilities.request_problem).
UNDECLARED = Capabilities(
    family="the model (its family not known yet)",
    languages=frozenset().union(*(e.capabilities.languages for e in ENGINES)),
    translates=True, names_language=False, max_segment_seconds=max(e.capabilities.max_segment_seconds for e in ENGINES),
    temperature=DEFAULT_ENGINE.capabilities.temperature,
    repetition_penalty=DEFAULT_ENGINE.capabilities.repetition_penalty, compiled_decode=True, low_vram=True)


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineLoadError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise EngineLoadError(f"{config_path} is not a JSON object")
    return config


def spec_for_config(config: dict[str, Any], where: str = "the checkpoint") -> EngineSpec:
    """The engine serving a checkpoint's config, by its ``model_type`` (and architectures)."""
    for spec in ENGINES:
        if spec.serves(config):
            return spec
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    if model_type == "qwen3_asr":
        raise EngineLoadError(f"{where} is a Qwen3-ASR-family model ({', '.join(architectures) or 'no architectures'}) "
                              "but not the recogniser: a Qwen3-ForcedAligner checkpoint belongs in --aligner-path")
    served = ", ".join(f"{t} ({spec.capabilities.family})" for spec in ENGINES for t in spec.model_types[:1])
    raise EngineLoadError(f"{where} has model_type {model_type!r}: this server runs {served}")


def spec_for_checkpoint(checkpoint: Path) -> EngineSpec:
    """The engine for a checkpoint folder (its config.json)."""
    return spec_for_config(_read_config(Path(checkpoint) / "config.json"), where=str(checkpoint))


def declared_spec(checkpoint: str, models_dir: Path, app_dir: Path) -> EngineSpec | None:
    """The engine for ``checkpoint`` as its config declares it, read where the loader will find it (a local
    folder, else the hub cache), or as its hub id is published; None while neither says (not downloaded
    yet) or its config names no engine. Never downloads."""
    config_path = checkpoint_config(checkpoint, models_dir, app_dir)
    if config_path is None:
        return PUBLISHED.get(checkpoint.strip().rstrip("/"))
    try:
        return spec_for_config(_read_config(config_path))
    except EngineLoadError:
        return None  # the loader will say what is wrong with it
