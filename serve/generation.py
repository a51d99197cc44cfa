"""What the model is asked and how it generates: the ASR prompt, per-request generation settings, and the
out-of-memory signal. Free of torch, so that the scheduler, the pipeline and the scale-out API role can use
them without loading the model's libraries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .languages import LANGUAGES
from .transcript import Word

# The model authors' ASR recipe (Qwen2.5-Omni cookbook "universal audio understanding"): a fixed system
# prompt and an instruction naming the language; punctuation is kept (subtitles need it).
SYSTEM_PROMPT = "You are a speech recognition model."
TRANSLATION_SYSTEM_PROMPT = "You are a speech translation model."
DEFAULT_INSTRUCTION = "Transcribe the audio into text."

# The cookbook asks for Chinese in Chinese.
_NATIVE_INSTRUCTIONS = {"zh": "请将这段中文语音转换为纯文本。", "yue": "請將這段粵語語音轉換為純文本。"}
_NATIVE_CONTEXT = {"zh": "音频中可能出现这些词：{}", "yue": "音頻中可能出現這些詞：{}"}


def instruction_for(language: str = "auto", prompt: str = "", target_language: str | None = None) -> str:
    """The user-turn instruction: which language to transcribe (or translate into ``target_language``), and
    context words (names, jargon) if any."""
    if target_language is not None:
        return _with_context(translation_instruction(target_language, language), prompt, "en")
    if language in _NATIVE_INSTRUCTIONS:
        instruction = _NATIVE_INSTRUCTIONS[language]
    elif language in LANGUAGES:
        instruction = f"Transcribe the {LANGUAGES[language]} audio into text."
    else:
        instruction = DEFAULT_INSTRUCTION
    return _with_context(instruction, prompt, language)


def translation_instruction(target_language: str, source_language: str = "auto") -> str:
    """The model authors' speech-translation recipe (Qwen2.5-Omni cookbook, "universal audio understanding"),
    naming the spoken language when the request does."""
    spoken = f"{LANGUAGES[source_language]} " if source_language in LANGUAGES else ""
    return f"Listen to the provided {spoken}speech and produce a translation in {LANGUAGES[target_language]} text."


def system_prompt_for(options: GenerationOptions) -> str:
    return TRANSLATION_SYSTEM_PROMPT if options.target_language is not None else SYSTEM_PROMPT


def _with_context(instruction: str, prompt: str, language: str) -> str:
    prompt = " ".join(prompt.split())
    if not prompt:
        return instruction
    return f"{instruction} {_NATIVE_CONTEXT.get(language, 'The audio may mention: {}').format(prompt)}"


class EngineOutOfMemory(Exception):
    """The accelerator ran out of memory on this input; its cache has been freed, so a smaller input may fit."""


@dataclass(frozen=True)
class GenerationOptions:
    """Settings one ``generate`` call shares: segments are batched together only when these are equal."""

    max_new_tokens: int = 8192
    temperature: float = 0.1  # 0 = greedy
    repetition_penalty: float = 1.1
    instruction: str = DEFAULT_INSTRUCTION  # Qwen2.5-Omni's user turn (from the language and the prompt)
    language: str = "auto"  # the request's language and context prompt, for engines that take them apart
    prompt: str = ""
    # After generating, align the transcript's words to the audio in this language (an ISO code of
    # serve.languages, or "auto"); None: no word times.
    align: str | None = None
    # Translate into this language (an ISO code) instead of transcribing, for engines that can; None: transcribe.
    target_language: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a scale-out task's options). Optional settings left unset are left out, so that a
        worker of an earlier version, which lacks them, still takes what it can do, and refuses the rest."""
        return {name: value for name, value in asdict(self).items()
                if not (value is None and name in _OPTIONAL_FIELDS)}


_OPTIONAL_FIELDS = ("align", "target_language")


@dataclass(frozen=True)
class SegmentResult:
    """What the model path returns for one segment.

    ``parts``: the raw text, in one part (two when the segment was split to fit in memory). ``tokens``: the
    generated ids (the end token excluded), ``avg_logprob`` their mean log-probability with the end token,
    ``no_speech_prob`` the probability that the model ended at once; the scores are the model's after the
    repetition penalty, before temperature (as Whisper reports them). ``words``: the aligned words, in
    seconds from the segment's start, of the cleaned text before OpenCC (None: not aligned;
    ``alignment_note`` says why when it was asked for).
    """

    parts: tuple[str, ...]
    tokens: tuple[int, ...] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    words: tuple[Word, ...] | None = None
    alignment_note: str | None = None
    language: str | None = None  # the language the model says it heard (ISO code), for models that say

    @classmethod
    def joined(cls, results: list[SegmentResult]) -> SegmentResult:
        """One result of a segment generated in parts (the halves of an out-of-memory retry)."""
        if len(results) == 1:
            return results[0]
        scored = all(r.tokens is not None and r.avg_logprob is not None for r in results)
        tokens = tuple(t for r in results for t in (r.tokens or ())) if scored else None
        weights = [len(r.tokens or ()) + 1 for r in results]  # + the end token, as in avg_logprob
        return cls(
            parts=tuple(p for r in results for p in r.parts),
            tokens=tokens,
            avg_logprob=sum(w * r.avg_logprob for w, r in zip(weights, results, strict=True)) / sum(weights)  # type: ignore[misc]
            if scored else None,
            # The segment is silent only if every part is: the least of the parts' probabilities.
            no_speech_prob=min(r.no_speech_prob for r in results if r.no_speech_prob is not None)
            if any(r.no_speech_prob is not None for r in results) else None,
            language=next((r.language for r in results if r.language), None),
        )

    def aligned(self, words: tuple[Word, ...] | None, note: str | None = None) -> SegmentResult:
        return replace(self, words=words, alignment_note=note)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the scale-out workers' results in Redis)."""
        return {"parts": list(self.parts), "tokens": None if self.tokens is None else list(self.tokens),
                "avg_logprob": self.avg_logprob, "no_speech_prob": self.no_speech_prob,
                "words": None if self.words is None else [w.to_dict() for w in self.words],
                "alignment_note": self.alignment_note, "language": self.language}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentResult:
        tokens, words = data.get("tokens"), data.get("words")
        return cls(parts=tuple(data["parts"]), tokens=None if tokens is None else tuple(tokens),
                   avg_logprob=data.get("avg_logprob"), no_speech_prob=data.get("no_speech_prob"),
                   words=None if words is None else tuple(Word(w["word"], w["start"], w["end"]) for w in words),
                   alignment_note=data.get("alignment_note"), language=data.get("language"))
