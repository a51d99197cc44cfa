"""The forced aligner on a tiny Qwen3-ForcedAligner checkpoint: the published layout, loading, word lists,
times inside their clips, the languages it cannot take. Random weights: plumbing, never accuracy."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pytest

from serve.aligner import MAX_SECONDS, AlignerLoadError, AlignmentUnavailable, ForcedAligner, _inside
from serve.transcript import Word
from tests.conftest import sine


@pytest.fixture(scope="module")
def aligner(tiny_aligner: Path):  # type: ignore[no-untyped-def]
    aligner = ForcedAligner.load(tiny_aligner, device="cpu")
    yield aligner
    aligner.close()


def test_the_tiny_checkpoint_has_the_published_layout(tiny_aligner: Path) -> None:
    assert sorted(p.name for p in tiny_aligner.iterdir()) == [
        "chat_template.jinja", "config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json"]
    config = json.loads((tiny_aligner / "config.json").read_text())
    assert config["model_type"] == "qwen3_asr" and config["architectures"] == ["Qwen3ASRForTokenClassification"]
    assert len(config["id2label"]) == 5000 and config["timestamp_segment_time"] == 80
    tokenizer = json.loads((tiny_aligner / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert added["<timestamp>"] == config["timestamp_token_id"] and added["<|audio_pad|>"] == config["audio_token_id"]
    processor = json.loads((tiny_aligner / "processor_config.json").read_text())
    assert processor["processor_class"] == "Qwen3ASRProcessor"
    features = processor["feature_extractor"]
    assert features["feature_size"] == 128 and features["sampling_rate"] == 16000


def test_words_cover_the_text_with_times_inside_their_clips(aligner: ForcedAligner) -> None:
    clips = [sine(3.0), sine(1.2, 330.0)]
    texts = ["Hello world, this is a test.", "你好，世界"]
    results = aligner.align(clips, texts)
    assert [[w.word for w in words] for words in results] == [["Hello", "world", "this", "is", "a", "test"],
                                                             ["你", "好", "世", "界"]]
    for words, clip in zip(results, clips, strict=True):
        duration = len(clip) / 16000
        times = [t for w in words for t in (w.start, w.end)]
        assert all(0 <= t <= duration for t in times) and times == sorted(times)


def test_texts_with_nothing_to_align_are_skipped(aligner: ForcedAligner) -> None:
    assert aligner.align([sine(1.0), sine(1.0), sine(1.0)], ["", "。，…", "one"], "en")[:2] == [[], []]
    assert aligner.align([sine(1.0)], ["  "]) == [[]]


def test_languages_it_does_not_cover_are_refused_with_a_reason(aligner: ForcedAligner) -> None:
    with pytest.raises(AlignmentUnavailable, match="does not cover Arabic"):
        aligner.align([sine(1.0)], ["مرحبا"], "ar")
    assert aligner.unsupported("zh") is None and aligner.unsupported("en") is None
    # Japanese and Korean words need nagisa and soynlp (requirements.txt); without them, refused with a reason.
    assert aligner.unsupported("ja") is None and aligner.unsupported("ko") is None


def test_a_clip_longer_than_the_aligner_takes_is_refused(aligner: ForcedAligner) -> None:
    with pytest.raises(ValueError, match="longer than the aligner's"):
        aligner.align([np.zeros(int((MAX_SECONDS + 1) * 16000), dtype=np.float32)], ["too long"])


def test_times_are_held_inside_the_clip_and_never_go_back() -> None:
    words = [{"text": "a", "start_time": 0.4, "end_time": 0.2}, {"text": "b", "start_time": 0.1, "end_time": 0.9},
             {"text": "c", "start_time": 7.0, "end_time": 9.0}]
    assert _inside(words, 2.0) == [Word("a", 0.4, 0.4), Word("b", 0.4, 0.9), Word("c", 2.0, 2.0)]


def test_an_omni_checkpoint_is_not_an_aligner(tiny_checkpoint: Path) -> None:
    with pytest.raises(AlignerLoadError):
        ForcedAligner.load(tiny_checkpoint, device="cpu")


def test_close_drops_the_model(tiny_aligner: Path) -> None:
    aligner = ForcedAligner.load(tiny_aligner, device="cpu")
    ref = weakref.ref(aligner.model)
    aligner.close()
    assert aligner.model is None and ref() is None


def test_japanese_and_korean_words_are_split_by_their_own_libraries(aligner: ForcedAligner) -> None:
    japanese = aligner.align([sine(2.0), sine(2.0)], ["今日はいい天気ですね。", ""], "ja")[0]
    assert [w.word for w in japanese] == ["今日", "は", "いい", "天気", "です", "ね"]  # nagisa's words, not characters
    korean = aligner.align([sine(2.0)], ["안녕하세요. 오늘 날씨가 좋네요."], "ko")[0]
    assert [w.word for w in korean] == ["안녕하세요", "오늘", "날씨가", "좋네요"]
