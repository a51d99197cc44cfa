"""Formatters: txt, SRT (parsed back with the srt library) and JSON segments."""

from __future__ import annotations

from datetime import timedelta

import srt

from serve.formats import to_segments, to_srt, to_txt
from serve.transcript import Piece, Transcript


def transcript() -> Transcript:
    return Transcript(pieces=(Piece(0.0, 10.0, "第一段"), Piece(10.0, 20.0, ""), Piece(20.0, 23.456, "第三段 text")),
                      duration=23.456)


def test_txt_joins_pieces() -> None:
    assert to_txt(transcript()) == "第一段第三段 text\n"
    assert to_txt(Transcript()) == ""


def test_srt_is_valid_and_uses_true_times() -> None:
    cues = list(srt.parse(to_srt(transcript())))
    assert [c.content for c in cues] == ["第一段", "第三段 text"]
    assert [c.index for c in cues] == [1, 2]
    assert cues[0].start == timedelta(0) and cues[0].end == timedelta(seconds=10)
    # The last cue ends where the audio ends, not at 30 s (a [i*seg, (i+1)*seg] window would).
    assert cues[1].start == timedelta(seconds=20) and cues[1].end == timedelta(seconds=23.456)


def test_srt_of_silence_is_empty_and_tiny_pieces_get_readable_cues() -> None:
    assert to_srt(Transcript()) == ""
    cue = next(srt.parse(to_srt(Transcript(pieces=(Piece(1.0, 1.01, "a"),), duration=5.0))))
    assert cue.end - cue.start >= timedelta(seconds=0.2)


def test_segments_skip_empty_pieces() -> None:
    assert to_segments(transcript()) == [
        {"id": 0, "start": 0.0, "end": 10.0, "text": "第一段"},
        {"id": 1, "start": 20.0, "end": 23.456, "text": "第三段 text"},
    ]
