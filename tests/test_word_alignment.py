"""Word times beside the model: the aligner slot's fallbacks, and words carried onto converted text."""

from __future__ import annotations

import numpy as np
import pytest

from serve import word_alignment
from serve.generation import SegmentResult
from serve.text import to_traditional
from serve.transcript import Word, word_spans
from serve.word_alignment import AlignerSlot, words_onto


class ScriptedAligner:
    """Test double: one word per whitespace-separated token, 0.1 s each, recording its calls."""

    def __init__(self, unsupported: dict[str, str] | None = None, fail: bool = False) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self._unsupported = unsupported or {}
        self.fail = fail
        self.closed = False

    def align(self, clips: list[np.ndarray], texts: list[str], language: str = "auto") -> list[list[Word]]:
        self.calls.append((texts, language))
        if self.fail:
            raise RuntimeError("CUDA error: an illegal memory access\nmore lines")
        return [[Word(w.strip(",."), 0.1 * i, 0.1 * i + 0.1) for i, w in enumerate(text.split())] for text in texts]

    def unsupported(self, language: str) -> str | None:
        return self._unsupported.get(language)

    def memory_bytes(self) -> int:
        return 1234

    def close(self) -> None:
        self.closed = True


CLIPS = [np.zeros(16000, dtype=np.float32)] * 2


def results(*texts: str) -> list[SegmentResult]:
    return [SegmentResult(parts=(text,)) for text in texts]


def test_words_are_aligned_on_the_cleaned_text_and_the_slot_reports_its_state() -> None:
    aligner = ScriptedAligner()
    slot = AlignerSlot(lambda: aligner)
    assert slot.state() == {"configured": True, "loaded": False, "memory_gb": 0.0, "error": None}
    # The model's wrapper is cleaned away before alignment, as it is from the answer.
    out = slot.align(CLIPS, results("Transcription: hello world.", ""), "en")
    assert aligner.calls == [(["hello world.", ""], "en")]
    assert out[0].words == (Word("hello", 0.0, 0.1), Word("world", 0.1, 0.2)) and out[0].parts == (
        "Transcription: hello world.",)
    assert out[1].words == () and out[1].alignment_note is None
    assert slot.loaded and slot.memory_bytes() == 1234 and slot.segments_aligned == 2
    slot.close()
    assert aligner.closed and not slot.loaded


def test_no_aligner_an_uncovered_language_and_a_failing_aligner_each_leave_a_note() -> None:
    unconfigured = AlignerSlot(None).align(CLIPS[:1], results("hello"), "en")[0]
    assert unconfigured.words is None and "--aligner-path" in unconfigured.alignment_note
    slot = AlignerSlot(lambda: ScriptedAligner(unsupported={"ar": "the aligner does not cover Arabic"}))
    uncovered = slot.align(CLIPS[:1], results("مرحبا"), "ar")[0]
    assert uncovered.words is None and uncovered.alignment_note == "no word times: the aligner does not cover Arabic"
    failing = AlignerSlot(lambda: ScriptedAligner(fail=True)).align(CLIPS[:1], results("hello"), "en")[0]
    assert failing.words is None and failing.alignment_note == \
        "no word times: alignment failed: CUDA error: an illegal memory access"


def test_a_failed_load_is_retried_only_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []

    def load() -> ScriptedAligner:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("no such folder: /models/aligner")
        return ScriptedAligner()

    clock = [1000.0]
    monkeypatch.setattr(word_alignment.time, "monotonic", lambda: clock[0])
    slot = AlignerSlot(load)
    first = slot.align(CLIPS[:1], results("hello"), "en")[0]
    assert first.words is None and "no such folder" in first.alignment_note and slot.state()["error"]
    assert slot.align(CLIPS[:1], results("hello"), "en")[0].words is None and len(attempts) == 1
    clock[0] += word_alignment.RETRY_LOAD_SECONDS + 1
    assert slot.align(CLIPS[:1], results("hello"), "en")[0].words is not None and len(attempts) == 2
    assert slot.state()["error"] is None


def test_a_request_naming_no_language_is_split_by_each_text_s_language() -> None:
    aligner = ScriptedAligner(unsupported={"ja": "aligning Japanese needs the nagisa package, which is not installed"})
    slot = AlignerSlot(lambda: aligner)
    out = slot.align(CLIPS, results("this is an english sentence", "これは日本語の文章です、とても長いです"), "auto")
    assert aligner.calls == [(["this is an english sentence"], "auto")]
    assert out[0].words and out[1].words is None and "nagisa" in out[1].alignment_note


def test_word_spans_find_words_without_their_punctuation_in_order() -> None:
    text = "Well, don’t stop: 42 times, well!"
    words = tuple(Word(w, 0, 0) for w in ("Well", "dont", "stop", "42", "times", "well", "missing"))
    assert word_spans(text, words) == [(0, 4), (6, 11), (12, 16), (18, 20), (21, 26), (28, 32), None]


@pytest.mark.parametrize("config", ["s2t", "s2twp", "s2hk"])
def test_times_move_onto_the_converted_text_unchanged(config: str) -> None:
    plain = "鼠标和内存，打印机。"
    words = tuple(Word(ch, 0.1 * i, 0.1 * i + 0.05) for i, ch in enumerate("鼠标和内存打印机"))
    converted = to_traditional(plain, config)
    moved = words_onto(plain, converted, words, lambda t: to_traditional(t, config))
    assert [(w.start, w.end) for w in moved] == [(w.start, w.end) for w in words]
    # Every character of the converted text (but punctuation) is in exactly one word, in order.
    assert "".join(w.word for w in moved) == converted.replace("，", "").replace("。", "")
    assert [s is not None for s in word_spans(converted, moved)] == [True] * len(words)


def test_a_word_that_is_not_where_expected_does_not_throw_the_rest_off() -> None:
    text = "The U.S. economy grew. The US dollar fell."
    words = tuple(Word(w, 0, 0) for w in ("The", "US", "economy", "missing", "grew", "The", "US", "dollar", "fell"))
    assert [text[a:b] if (a, b) != (0, 0) else None for span in word_spans(text, words)
            for a, b in [span or (0, 0)]] == ["The", "U.S", "economy", None, "grew", "The", "US", "dollar", "fell"]


def test_a_batch_that_fails_together_is_aligned_one_segment_at_a_time() -> None:
    class FailsOnTwo(ScriptedAligner):
        """Test double: a call with more than one clip, or with the text "bad", raises (out of memory)."""

        def align(self, clips, texts, language="auto"):  # type: ignore[no-untyped-def]
            if len(clips) > 1 or texts == ["bad"]:
                self.calls.append((texts, language))
                raise RuntimeError("CUDA out of memory")
            return super().align(clips, texts, language)

    aligner = FailsOnTwo()
    out = AlignerSlot(lambda: aligner).align(CLIPS + CLIPS[:1], results("good one", "bad", "fine"), "en")
    assert [len(call[0]) for call in aligner.calls] == [3, 1, 1, 1]
    assert out[0].words and out[2].words and out[1].words is None
    assert out[1].alignment_note == "no word times: alignment failed: CUDA out of memory"


def test_the_checkpoint_is_found_before_the_gpu_thread_needs_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1234)
    located = []
    slot = AlignerSlot(lambda: ScriptedAligner(), locate=lambda: located.append(1) or tmp_path)
    assert slot.prepare() == 1234 and located == [1]  # the weights' size: room the batch size leaves for them

    def missing():  # type: ignore[no-untyped-def]
        raise OSError("not found locally, and --local-model forbids a download")

    assert AlignerSlot(lambda: ScriptedAligner(), locate=missing).prepare() == 0
