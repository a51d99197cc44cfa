"""Pure functions from a :class:`Transcript` to the formats the API serves: txt, SRT, WebVTT, JSON segments,
OpenAI's verbose JSON. Subtitles are shaped for reading: long texts become several cues of at most two
lines, with times divided in proportion to the characters."""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import timedelta

import srt

from .transcript import Piece, Transcript

# A cue must last long enough to be read, even for a blip of audio.
_MIN_CUE_SECONDS = 0.2
# Reading comfort (the usual broadcast guidelines): 42 columns per line (a CJK character is two columns,
# so 21 of them), two lines per cue, and no cue longer than 7 seconds.
LINE_COLUMNS = 42
LINES_PER_CUE = 2
MAX_CUE_SECONDS = 7.0

_TOKEN = re.compile(r"\s+|[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f]|[^\s\u2e80-\u9fff"
                    r"\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f]+")
_BREAK_AFTER = set("，。！？；：、,.!?;:")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str  # lines joined by "\n"


def _columns(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _lines(text: str, columns: int = LINE_COLUMNS) -> list[str]:
    """Break ``text`` into lines of at most ``columns`` (CJK-aware), preferring breaks after punctuation."""
    lines: list[str] = []
    line = ""
    for token in _TOKEN.findall(" ".join(text.split())):
        if token.isspace():
            if line:
                line += " "
            continue
        if line and _columns(line + token) > columns:
            # Break after the last punctuation in the second half of the line, if there is one.
            cut = max((i for i, ch in enumerate(line) if ch in _BREAK_AFTER and i >= len(line) // 2), default=-1)
            if 0 <= cut < len(line) - 1:
                lines.append(line[: cut + 1].strip())
                line = line[cut + 1:].lstrip()
            else:
                lines.append(line.strip())
                line = ""
        while _columns(token) > columns:  # a "word" longer than a line (URLs, runs of symbols)
            head = token
            while _columns(head) > columns:
                head = head[:-1]
            lines.append(head)
            token = token[len(head):]
        line += token
    if line.strip():
        lines.append(line.strip())
    return lines


def shape_cues(piece: Piece, columns: int = LINE_COLUMNS, lines_per_cue: int = LINES_PER_CUE,
               max_seconds: float = MAX_CUE_SECONDS) -> list[Cue]:
    """One piece as readable cues, each timed in proportion to the characters it shows."""
    lines = _lines(piece.text, columns)
    if not lines:
        return []
    total = sum(len(line) for line in lines)
    duration = max(piece.end - piece.start, 0.0)
    per_char = duration / total if total else 0.0
    groups: list[list[str]] = []
    for line in lines:
        current = groups[-1] if groups else None
        if current is not None and len(current) < lines_per_cue and \
                per_char * (sum(len(x) for x in current) + len(line)) <= max_seconds:
            current.append(line)
        else:
            groups.append([line])
    cues = []
    consumed = 0
    for group in groups:
        chars = sum(len(x) for x in group)
        start = piece.start + per_char * consumed
        consumed += chars
        end = piece.start + per_char * consumed if consumed < total else piece.end
        cues.append(Cue(start, end, "\n".join(group)))
    return cues


def _to_millisecond(seconds: float) -> float:
    """One rounding rule for every format: to the nearest millisecond (SRT's writer would truncate)."""
    return round(seconds * 1000) / 1000


def _readable_cues(transcript: Transcript) -> list[Cue]:
    cues: list[Cue] = []
    for piece in transcript.pieces:
        for cue in shape_cues(piece):
            end = max(cue.end, cue.start + _MIN_CUE_SECONDS)
            if transcript.duration:
                end = min(end, max(transcript.duration, cue.start + _MIN_CUE_SECONDS))
            cues.append(Cue(_to_millisecond(cue.start), _to_millisecond(end), cue.text))
    return cues


def to_txt(transcript: Transcript) -> str:
    text = transcript.text
    return text + "\n" if text else ""


def to_srt(transcript: Transcript) -> str:
    """SubRip subtitles, timed by the speech each cue covers."""
    subtitles = [srt.Subtitle(index=i, start=timedelta(seconds=c.start), end=timedelta(seconds=c.end),
                              content=c.text)
                 for i, c in enumerate(_readable_cues(transcript), start=1)]
    return srt.compose(subtitles, reindex=False)


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def to_vtt(transcript: Transcript) -> str:
    """WebVTT subtitles (the same cues as SRT)."""
    blocks = ["WEBVTT", ""]
    for cue in _readable_cues(transcript):
        # "-->" inside a cue would end it early: WebVTT forbids it in cue text.
        blocks += [f"{_vtt_time(cue.start)} --> {_vtt_time(cue.end)}", cue.text.replace("-->", "->"), ""]
    return "\n".join(blocks)


def to_segments(transcript: Transcript) -> list[dict]:
    """The pieces as JSON-ready dicts (seconds rounded to milliseconds)."""
    spoken = [p for p in transcript.pieces if p.text.strip()]
    return [{"id": i, "start": _to_millisecond(p.start), "end": _to_millisecond(p.end), "text": p.text}
            for i, p in enumerate(spoken)]


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: bytes over zlib-compressed bytes (high for looping output)."""
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def usage(transcript: Transcript) -> dict:
    """OpenAI's duration usage: what a transcription costs is the audio's length."""
    return {"type": "duration", "seconds": round(transcript.duration, 3)}


def to_verbose_json(transcript: Transcript, *, language: str, temperature: float) -> dict:
    """OpenAI's ``verbose_json`` transcription object, with the real start and end of every segment.

    Fields this model cannot honestly provide (token log-probabilities, a no-speech probability) are left
    out rather than invented.
    """
    return {
        "task": "transcribe",
        "language": language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [
            {**segment, "seek": round(segment["start"] * 100), "temperature": temperature,
             "compression_ratio": compression_ratio(segment["text"])}
            for segment in to_segments(transcript)
        ],
        "usage": usage(transcript),
    }
