"""Post-processing of the model's raw output: control characters, wrapper stripping, a repetition guard,
OpenCC, joining."""

from __future__ import annotations

import re
import threading
import unicodedata
from functools import lru_cache

# Zero-shot Qwen2.5-Omni sometimes answers "The original content of this audio is: '...'" instead
# of the bare transcript. Only whole leading phrases of that shape are removed.
_WRAPPER_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^\s*(?:the\s+)?(?:original\s+)?(?:content|transcription|transcript|text)\s+of\s+(?:this|the)\s+"
        r"(?:audio|speech|recording|clip)(?:\s+clip)?\s+(?:is|reads|says)\s*[:：]?\s*",
        r"^\s*(?:this|the)\s+(?:audio|speech|recording)(?:\s+clip)?\s+(?:says|reads|contains)\s*[:：]?\s*",
        r"^\s*(?:here\s+is|here's)\s+the\s+(?:transcription|transcript)(?:\s+of\s+(?:this|the)\s+audio)?\s*[:：]\s*",
        r"^\s*(?:transcription|transcript)\s*[:：]\s*",
        r"^\s*(?:这段|這段|该|該)?(?:音频|音頻|语音|語音|录音|錄音)(?:的)?(?:原始)?(?:内容|內容|文本)?(?:是|为|為|如下)\s*[:：]?\s*",
    )
]
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』"}

# A phrase repeated more than MAX_REPEATS times in a row (or a one- or two-character unit more than
# MAX_SHORT_REPEATS times) is a decoding loop, not speech: keep that many and drop the rest.
MAX_REPEATS = 4
MAX_SHORT_REPEATS = 10
_REPEAT = re.compile(r"(.{1,40}?)(?:\s*\1){" + str(MAX_REPEATS) + ",}", re.DOTALL)


# Control characters (but tab and newline) are never speech, and break subtitle files, terminals and XML
# consumers downstream.
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def remove_control_characters(text: str) -> str:
    return _NOT_TEXT.sub("", text)


def strip_wrappers(text: str) -> str:
    """Remove a chatty lead-in and the quotes around what follows it."""
    stripped = text.strip()
    for pattern in _WRAPPER_PATTERNS:
        new = pattern.sub("", stripped, count=1)
        if new != stripped:
            stripped = new.strip()
            if len(stripped) >= 2 and _QUOTE_PAIRS.get(stripped[0]) == stripped[-1]:
                stripped = stripped[1:-1].strip()
            elif len(stripped) >= 3 and _QUOTE_PAIRS.get(stripped[0]) == stripped[-2] and stripped[-1] in ".。":
                stripped = stripped[1:-2].strip()
            break
    return stripped


def limit_repetitions(text: str) -> str:
    """Cut runaway repetitions ("谢谢谢谢..." x 500, "I am. I am. I am. ...") down to a few occurrences.

    Digit runs are left alone: "1000000" is a number, not a loop.
    """

    def keep(match: re.Match[str]) -> str:
        unit = match.group(1)
        core = unit.strip()
        if not core or core.isdigit():
            return match.group(0)
        limit = MAX_SHORT_REPEATS if len(core) <= 2 else MAX_REPEATS
        repeats = match.group(0).count(unit)
        if repeats <= limit:
            return match.group(0)
        gap = match.group(0)[len(unit):]
        separator = gap[: len(gap) - len(gap.lstrip())] if gap[:1].isspace() else ""
        return separator.join([unit] * limit)

    return _REPEAT.sub(keep, text)


_converter_lock = threading.Lock()


@lru_cache(maxsize=8)
def _converter(config: str):  # type: ignore[no-untyped-def]
    import opencc

    return opencc.OpenCC(f"{config}.json")


def to_traditional(text: str, config: str = "s2t") -> str:
    """Chinese script conversion with OpenCC: ``s2t`` (Simplified -> Traditional), a regional variant such as
    ``s2tw``/``s2twp``/``s2hk``, or back with ``t2s``."""
    with _converter_lock:
        converter = _converter(config)
    return converter.convert(text)


def clean_transcript(raw: str, *, opencc: str | None = None) -> str:
    """Everything done to one segment's raw output, in order."""
    text = limit_repetitions(strip_wrappers(remove_control_characters(raw)))
    if opencc:
        text = to_traditional(text, opencc)
    return text.strip()


def clean_parts(parts: list[str] | tuple[str, ...], *, opencc: str | None = None) -> str:
    """One segment's text from its raw parts (two when it was generated in halves): each part cleaned, joined."""
    cleaned = [clean_transcript(part, opencc=opencc) for part in parts]
    return cleaned[0] if len(cleaned) == 1 else join_pieces(cleaned)


def _is_cjk(char: str) -> bool:
    if not char:
        return False
    name = unicodedata.name(char, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "FULLWIDTH", "IDEOGRAPHIC")) or (
        unicodedata.category(char) == "Po" and ord(char) > 0x2E7F
    )


def separator(left: str, right: str) -> str:
    """What goes between two transcript pieces: a space between alphabetic text, nothing next to CJK."""
    if not left or not right or _is_cjk(left[-1]) or _is_cjk(right[0]):
        return ""
    return " "


def join_pieces(texts: list[str]) -> str:
    """Join segment transcripts: one space between alphabetic neighbours, none next to CJK text."""
    out = ""
    for text in (t.strip() for t in texts):
        if text:
            out += separator(out, text) + text
    return out
