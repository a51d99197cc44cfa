"""What the model is asked and how it generates: the ASR prompt, per-request generation settings, and the
out-of-memory signal. Free of torch, so that the scheduler, the pipeline and the scale-out API role can use
them without loading the model's libraries.
"""

from __future__ import annotations

from dataclasses import dataclass

from .languages import LANGUAGES

# The model authors' ASR recipe (Qwen2.5-Omni cookbook "universal audio understanding"): a fixed system
# prompt and an instruction naming the language; punctuation is kept (subtitles need it).
SYSTEM_PROMPT = "You are a speech recognition model."
DEFAULT_INSTRUCTION = "Transcribe the audio into text."

# The cookbook asks for Chinese in Chinese.
_NATIVE_INSTRUCTIONS = {"zh": "请将这段中文语音转换为纯文本。", "yue": "請將這段粵語語音轉換為純文本。"}
_NATIVE_CONTEXT = {"zh": "音频中可能出现这些词：{}", "yue": "音頻中可能出現這些詞：{}"}


def instruction_for(language: str = "auto", prompt: str = "") -> str:
    """The user-turn instruction: which language to transcribe, and context words (names, jargon) if any."""
    if language in _NATIVE_INSTRUCTIONS:
        instruction = _NATIVE_INSTRUCTIONS[language]
    elif language in LANGUAGES:
        instruction = f"Transcribe the {LANGUAGES[language]} audio into text."
    else:
        instruction = DEFAULT_INSTRUCTION
    prompt = " ".join(prompt.split())
    if prompt:
        context = _NATIVE_CONTEXT.get(language, "The audio may mention: {}")
        instruction = f"{instruction} {context.format(prompt)}"
    return instruction


class EngineOutOfMemory(Exception):
    """The accelerator ran out of memory on this input; its cache has been freed, so a smaller input may fit."""


@dataclass(frozen=True)
class GenerationOptions:
    """Settings one ``generate`` call shares: segments are batched together only when these are equal."""

    max_new_tokens: int = 8192
    temperature: float = 0.1  # 0 = greedy
    repetition_penalty: float = 1.1
    instruction: str = DEFAULT_INSTRUCTION
