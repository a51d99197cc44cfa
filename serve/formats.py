"""Pure functions from a :class:`Transcript` to the formats the API serves: txt, SRT, WebVTT, JSON segments,
OpenAI's verbose JSON. Subtitles are shaped for reading: long texts become several cues of at most two
lines, each timed by the aligned words it shows (from their first's start to their last's end) or, for a
piece without word times, with the piece's time divided in proportion to the characters."""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import timedelta

import srt

from .transcript import Piece, Transcript, Word, word_spans

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
    words: tuple[Word, ...] = ()  # the timed words it shows (pieces with word times)


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
    """One piece as readable cues: lines of at most ``columns``, at most ``lines_per_cue`` of them and
    ``max_seconds`` long a cue, timed by the piece's words when it has their times."""
    lines = _lines(piece.text, columns)
    if not lines:
        return []
    timed = _timed_lines(piece, lines)
    if timed is None:
        return _proportional_cues(piece, lines, lines_per_cue, max_seconds)
    groups: list[list[tuple[str, float, float, tuple[Word, ...]]]] = []
    for line in timed:
        current = groups[-1] if groups else None
        if current is not None and len(current) < lines_per_cue and line[2] - current[0][1] <= max_seconds:
            current.append(line)
        else:
            groups.append([line])
    return [Cue(group[0][1], max(group[-1][2], group[0][1]), "\n".join(line[0] for line in group),
                tuple(w for line in group for w in line[3])) for group in groups]


def _timed_lines(piece: Piece, lines: list[str]) -> list[tuple[str, float, float, tuple[Word, ...]]] | None:
    """Each line with the start of its first timed word, the end of its last, and its words; a line without a
    timed word (punctuation) takes the end of the line before. None when the piece has no timed words."""
    if not piece.words:
        return None
    flat = " ".join(piece.text.split())  # what the lines were cut from
    spans = [(span, word) for span, word in zip(word_spans(flat, piece.words), piece.words, strict=True) if span]
    if not spans:
        return None
    timed = []
    cursor = 0
    previous_end = piece.start
    for line in lines:
        begin = flat.find(line, cursor)
        begin = cursor if begin < 0 else begin
        cursor = begin + len(line)
        inside = tuple(word for (a, b), word in spans if a < cursor and b > begin)
        if inside:
            start = min(max(inside[0].start, previous_end, piece.start), piece.end)
            end = min(max(inside[-1].end, start), piece.end)
        else:
            start = end = previous_end
        timed.append((line, start, end, inside))
        previous_end = end
    return timed


def _proportional_cues(piece: Piece, lines: list[str], lines_per_cue: int, max_seconds: float) -> list[Cue]:
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
    shaped = [cue for piece in transcript.pieces for cue in shape_cues(piece)]
    cues: list[Cue] = []
    for i, cue in enumerate(shaped):
        end = max(cue.end, cue.start + _MIN_CUE_SECONDS)
        following = shaped[i + 1].start if i + 1 < len(shaped) else None
        if following is not None and cue.end < following < end:
            end = following  # lengthened to be readable, but not over the next cue's first word
        if transcript.duration:
            end = min(end, max(transcript.duration, cue.start + _MIN_CUE_SECONDS))
        cues.append(Cue(_to_millisecond(cue.start), _to_millisecond(end), cue.text, cue.words))
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


def to_vtt(transcript: Transcript, *, word_level: bool = False) -> str:
    """WebVTT subtitles (the same cues as SRT); ``word_level`` adds each word's start inside its cue
    (``<00:00:01.000>`` timestamps, which players use to highlight the word being spoken)."""
    blocks = ["WEBVTT", ""]
    for cue in _readable_cues(transcript):
        text = _with_word_times(cue) if word_level else _vtt_escape(cue.text)
        blocks += [f"{_vtt_time(cue.start)} --> {_vtt_time(cue.end)}", text, ""]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    """Cue text as WebVTT wants it: "&", "<" and ">" as character references (a bare "<" opens a tag, and
    "-->" would end the cue early)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _with_word_times(cue: Cue) -> str:
    """The cue's text with a timestamp tag before each word after the first; WebVTT wants them inside the
    cue's time and increasing, so a word that starts at the cue's start or with the word before gets none."""
    out, cursor, last = [], 0, cue.start
    for span, word in zip(word_spans(cue.text, cue.words), cue.words, strict=True):
        start = _to_millisecond(word.start)
        if span is None or not last < start < cue.end:
            continue
        out += [_vtt_escape(cue.text[cursor:span[0]]), f"<{_vtt_time(start)}>"]
        cursor, last = span[0], start
    return "".join(out) + _vtt_escape(cue.text[cursor:])


def to_segments(transcript: Transcript, *, words: bool = False) -> list[dict]:
    """The pieces as JSON-ready dicts (seconds rounded to milliseconds), with their timed ``words`` if asked."""
    spoken = [p for p in transcript.pieces if p.text.strip()]
    return [{"id": i, "start": _to_millisecond(p.start), "end": _to_millisecond(p.end), "text": p.text,
             **({"words": _words(p.words)} if words and p.words is not None else {})}
            for i, p in enumerate(spoken)]


def _words(words: tuple[Word, ...]) -> list[dict]:
    return [{"word": w.word, "start": _to_millisecond(w.start), "end": _to_millisecond(w.end)} for w in words]


def word_timestamps_note(transcript: Transcript) -> str | None:
    """Why some segments have no word times (their cues are timed by characters), when there is a reason."""
    notes = transcript.alignment_notes
    return "; ".join(notes) if notes else None


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: bytes over zlib-compressed bytes (high for looping output)."""
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def usage(transcript: Transcript) -> dict:
    """OpenAI's duration usage: what a transcription costs is the audio's length."""
    return {"type": "duration", "seconds": round(transcript.duration, 3)}


def to_verbose_json(transcript: Transcript, *, language: str, temperature: float, words: bool = False,
                    task: str = "transcribe") -> dict:
    """OpenAI's ``verbose_json`` transcription (or, with ``task`` translate, translation) object, with the real
    start and end of every segment, and the words with their times when ``words``
    (``timestamp_granularities[]=word``).

    A segment's ``tokens`` are the ids the model generated, ``avg_logprob`` their mean log-probability and
    ``no_speech_prob`` the model's probability of ending at once (see serve.engines.token_scores); a transcript
    stored before these were kept has none to give.
    """
    spoken = [p for p in transcript.pieces if p.text.strip()]
    body: dict = {"task": task, "language": language, "duration": round(transcript.duration, 3),
                  "text": transcript.text}
    body["segments"] = [
        {"id": segment["id"], "seek": round(segment["start"] * 100), "start": segment["start"],
         "end": segment["end"], "text": segment["text"],
         **({"tokens": list(piece.tokens), "avg_logprob": piece.avg_logprob,
             "no_speech_prob": piece.no_speech_prob} if piece.tokens is not None else {}),
         "temperature": temperature, "compression_ratio": compression_ratio(segment["text"])}
        for segment, piece in zip(to_segments(transcript), spoken, strict=True)
    ]
    if words:
        body["words"] = _words(tuple(w for p in spoken for w in (p.words or ())))
        note = word_timestamps_note(transcript)
        if note:
            body["word_timestamps_note"] = note
    if task == "transcribe":  # OpenAI's translation objects carry no usage
        body["usage"] = usage(transcript)
    return body


# What each file format is served as; the OpenAI API answers SRT as text/plain, as OpenAI does.
MIMETYPES = {"txt": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
OPENAI_MIMETYPES = {**MIMETYPES, "srt": "text/plain"}


def render(output_format: str, transcript: Transcript, *, word_level: bool = False) -> str:
    """The transcript as a file: ``txt``, ``srt`` or ``vtt`` (with word timestamps when ``word_level``)."""
    if output_format == "vtt":
        return to_vtt(transcript, word_level=word_level)
    return {"txt": to_txt, "srt": to_srt}[output_format](transcript)
