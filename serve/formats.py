"""Pure functions from a :class:`Transcript` to the formats the API serves."""

from __future__ import annotations

from datetime import timedelta

import srt

from .transcript import Transcript

# A cue must last long enough to be read, even for a blip of audio.
_MIN_CUE_SECONDS = 0.2


def to_txt(transcript: Transcript) -> str:
    text = transcript.text
    return text + "\n" if text else ""


def to_srt(transcript: Transcript) -> str:
    """SubRip subtitles: one cue per non-empty piece, timed by the audio that piece covers."""
    cues = []
    for piece in transcript.pieces:
        text = piece.text.strip()
        if not text:
            continue
        end = max(piece.end, piece.start + _MIN_CUE_SECONDS)
        if transcript.duration:
            end = min(end, max(transcript.duration, piece.start + _MIN_CUE_SECONDS))
        cues.append(srt.Subtitle(index=len(cues) + 1, start=timedelta(seconds=piece.start),
                                 end=timedelta(seconds=end), content=text))
    return srt.compose(cues, reindex=False)


def to_segments(transcript: Transcript) -> list[dict]:
    """The pieces as JSON-ready dicts (seconds rounded to milliseconds)."""
    spoken = [p for p in transcript.pieces if p.text.strip()]
    return [{"id": i, "start": round(p.start, 3), "end": round(p.end, 3), "text": p.text} for i, p in enumerate(spoken)]
