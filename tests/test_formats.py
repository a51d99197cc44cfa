"""Formatters: txt, SRT (parsed back with the srt library) and JSON segments."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
import srt

from serve.formats import to_segments, to_srt, to_txt
from serve.transcript import Piece, Transcript, Word


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


def test_vtt_has_the_same_cues_with_dot_milliseconds() -> None:
    from serve.formats import to_vtt

    vtt = to_vtt(transcript())
    assert vtt.startswith("WEBVTT\n\n")
    assert "00:00:00.000 --> 00:00:10.000\n第一段\n" in vtt
    assert "00:00:20.000 --> 00:00:23.456\n第三段 text\n" in vtt
    assert to_vtt(Transcript((Piece(0, 1, "a --> b"),), 1.0)).count("-->") == 1  # cue text cannot end a cue


def test_long_texts_become_readable_cues_timed_in_proportion() -> None:
    from serve.formats import LINE_COLUMNS, shape_cues

    english = Piece(10.0, 22.0, "The meeting started at nine in the morning, and everyone agreed that the new design "
                                "was a clear improvement over the old one. Please send the report before Friday.")
    cues = shape_cues(english)
    assert len(cues) >= 2 and cues[0].start == 10.0 and cues[-1].end == 22.0
    for a, b in itertools.pairwise(cues):
        assert a.end == pytest.approx(b.start)
    for cue in cues:
        lines = cue.text.split("\n")
        assert 1 <= len(lines) <= 2 and all(len(line) <= LINE_COLUMNS for line in lines)
    assert " ".join(c.text.replace("\n", " ") for c in cues) == english.text
    # Durations follow the characters shown.
    chars = [len(c.text.replace("\n", "")) for c in cues]
    for cue, n in zip(cues, chars, strict=True):
        assert (cue.end - cue.start) == pytest.approx(12.0 * n / sum(chars), rel=0.05)


def test_cjk_lines_are_shorter_and_break_after_punctuation() -> None:
    from serve.formats import shape_cues

    chinese = Piece(0.0, 10.0, "今天的会议讨论了新设计的优点，大家一致认为它比旧版本有明显的改进。"
                               "请在星期五下午之前把报告发给我，谢谢大家的参与。")
    cues = shape_cues(chinese)
    lines = [line for c in cues for line in c.text.split("\n")]
    assert all(len(line) <= 21 for line in lines)
    assert lines[0].endswith("，")
    assert "".join(lines) == chinese.text


def test_short_pieces_stay_one_cue() -> None:
    from serve.formats import shape_cues

    assert [c.text for c in shape_cues(Piece(0, 2, "Hello world."))] == ["Hello world."]
    assert shape_cues(Piece(0, 2, "   ")) == []


def test_verbose_json_fields() -> None:
    from serve.formats import to_verbose_json

    body = to_verbose_json(transcript(), language="zh", temperature=0.0)
    assert body["task"] == "transcribe" and body["language"] == "zh" and body["duration"] == 23.456
    assert body["text"] == "第一段第三段 text"
    first = body["segments"][0]
    assert (first["start"], first["end"], first["seek"], first["temperature"]) == (0.0, 10.0, 0, 0.0)
    assert first["compression_ratio"] > 0
    assert body["usage"] == {"type": "duration", "seconds": 23.456}  # OpenAI's duration usage


def test_srt_vtt_and_json_round_every_time_the_same_way() -> None:
    """04,228 in SRT against 04.229 in VTT for the same cue was a real difference: one rounding rule now."""
    import random

    from serve.formats import to_vtt

    rng = random.Random(7)
    starts = sorted([round(rng.uniform(0, 600), 6) for _ in range(200)] + [4.2286, 59.9996, 61.0004])
    pieces = tuple(Piece(t, t + rng.uniform(0.3, 3.0), "word") for t in starts)
    transcript = Transcript(pieces=pieces, duration=700.0)
    srt_times = [line.split(" --> ") for line in to_srt(transcript).splitlines() if " --> " in line]
    vtt_times = [line.split(" --> ") for line in to_vtt(transcript).splitlines() if " --> " in line]
    assert len(srt_times) == len(vtt_times) == len(pieces)
    assert [[t.replace(",", ".") for t in pair] for pair in srt_times] == vtt_times
    starts_shown = {pair[0] for pair in srt_times}
    assert {"00:00:04,229", "00:01:00,000", "00:01:01,000"} <= starts_shown  # the nearest millisecond, not cut

    def seconds(stamp: str) -> float:
        hours, minutes, rest = stamp.replace(",", ".").split(":")
        return round(int(hours) * 3600 + int(minutes) * 60 + float(rest), 3)

    assert [s["start"] for s in to_segments(transcript)] == [seconds(pair[0]) for pair in srt_times]


def aligned_piece() -> Piece:
    """Twenty English words spoken from 10 s, 0.5 s each with a pause after the tenth, and a Chinese tail."""
    english = [f"word{i}" for i in range(20)]
    words = [Word(w, 10 + 0.5 * i + (2.0 if i >= 10 else 0), 10.4 + 0.5 * i + (2.0 if i >= 10 else 0))
             for i, w in enumerate(english)]
    words += [Word(ch, 23.0 + 0.3 * i, 23.25 + 0.3 * i) for i, ch in enumerate("你好世界")]
    text = " ".join(english[:10]) + ". " + " ".join(english[10:]) + "! 你好，世界。"
    return Piece(9.8, 25.0, text, words=tuple(words))


def test_subtitle_cues_follow_the_aligned_words() -> None:
    from serve.formats import shape_cues

    piece = aligned_piece()
    cues = shape_cues(piece)
    assert len(cues) >= 3
    for cue in cues:
        # Each cue starts at its first word and ends at its last, whatever share of the characters it has.
        assert cue.words and cue.start == cue.words[0].start and cue.end == cue.words[-1].end
        assert cue.end - cue.start <= 7.0
        assert all(w.word in cue.text for w in cue.words)
    assert [w for cue in cues for w in cue.words] == list(piece.words)  # every word in one cue, in order
    subtitles = list(srt.parse(to_srt(Transcript((piece,), 25.0)), ignore_errors=False))
    assert [(s.start.total_seconds(), s.end.total_seconds()) for s in subtitles] == \
        [(c.start, c.end) for c in cues]
    # Without words, the same piece is timed by characters from its start.
    assert shape_cues(Piece(piece.start, piece.end, piece.text))[0].start == 9.8


def test_word_level_vtt_parses_and_times_each_word_inside_its_cue() -> None:
    import re

    import webvtt

    from serve.formats import to_vtt

    transcript = Transcript((aligned_piece(),), 25.0)
    text = to_vtt(transcript, word_level=True)
    captions = webvtt.from_string(text)
    assert len(captions) == len(webvtt.from_string(to_vtt(transcript)))
    def seconds(stamp: str) -> float:
        return sum(float(x) * f for x, f in zip(stamp.split(":"), (3600, 60, 1), strict=True))

    for caption in captions:
        start, end = seconds(caption.start), seconds(caption.end)
        stamps = [seconds(m) for m in re.findall(r"<(\d\d:\d\d:\d\d\.\d\d\d)>", caption.raw_text)]
        assert stamps and stamps == sorted(stamps) and all(start < t < end for t in stamps)
        assert re.sub(r"<[^>]+>", "", caption.raw_text) == caption.text  # the words, unchanged
    assert "<00:00:10.500>word1" in text
    escaped = to_vtt(Transcript((Piece(0, 2, "a <b> & c", words=(Word("a", 0, 0.5), Word("b", 0.6, 1.0),
                                                                   Word("c", 1.2, 1.5))),), 2.0), word_level=True)
    assert "a &lt;<00:00:00.600>b&gt; &amp; <00:00:01.200>c" in escaped


def test_verbose_json_carries_token_scores_and_words_when_asked() -> None:
    from serve.formats import to_verbose_json

    scored = Piece(0.0, 2.0, "hello there", tokens=(9, 8), avg_logprob=-0.25, no_speech_prob=0.01,
                   words=(Word("hello", 0.1, 0.5), Word("there", 0.6, 1.0)))
    body = to_verbose_json(Transcript((scored, Piece(2.0, 4.0, "no scores")), 4.0), language="english",
                           temperature=0.0, words=True)
    first, second = body["segments"]
    assert (first["tokens"], first["avg_logprob"], first["no_speech_prob"]) == ([9, 8], -0.25, 0.01)
    assert "tokens" not in second  # a transcript stored before scores were kept: nothing invented
    assert body["words"] == [{"word": "hello", "start": 0.1, "end": 0.5}, {"word": "there", "start": 0.6, "end": 1.0}]
    assert "words" not in to_verbose_json(Transcript((scored,), 2.0), language="english", temperature=0.0)
    assert to_segments(Transcript((scored,), 2.0), words=True)[0]["words"] == body["words"]
    assert "words" not in to_segments(Transcript((scored,), 2.0))[0]
