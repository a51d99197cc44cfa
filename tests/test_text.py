"""Post-processing: wrapper stripping, the repetition guard, OpenCC and joining."""

from __future__ import annotations

import pytest

from serve.text import (
    clean_transcript,
    join_pieces,
    limit_repetitions,
    remove_control_characters,
    strip_wrappers,
    to_traditional,
)


@pytest.mark.parametrize(("raw", "clean"), [
    ("The original content of this audio is: 'Hello world.'", "Hello world."),
    ('The audio says: "good morning"', "good morning"),
    ("Here is the transcription: it works", "it works"),
    ("这段音频的原始内容是：“你好世界”。", "你好世界"),
    ("音频内容为：今天天气很好", "今天天气很好"),
    ("Transcription: hi", "hi"),
    ("plain transcript", "plain transcript"),
    ("The audio was noisy but fine", "The audio was noisy but fine"),
])
def test_strip_wrappers(raw: str, clean: str) -> None:
    assert strip_wrappers(raw) == clean


def test_limit_repetitions_cuts_decoding_loops_only() -> None:
    assert limit_repetitions("谢" * 50) == "谢" * 10
    assert limit_repetitions("I am here. " * 20).strip() == ("I am here. " * 4).strip()
    assert limit_repetitions("哈哈哈哈哈") == "哈哈哈哈哈"
    assert limit_repetitions("the price was 1000000000 dollars") == "the price was 1000000000 dollars"
    assert limit_repetitions("no no no") == "no no no"


def test_opencc_simplified_to_traditional() -> None:
    assert to_traditional("这是转录的文本内容") == "這是轉錄的文本內容"
    assert to_traditional("软件", "s2twp") == "軟體"
    assert to_traditional("hello 123") == "hello 123"


def test_control_characters_are_removed() -> None:
    assert remove_control_characters("a\x00b\x10c\r\n\td\x7f\x85e\ufffd 你好") == "abc\n\tde\ufffd 你好"
    assert clean_transcript("\x1b[31mHello world\x0c") == "[31mHello world"


def test_clean_transcript_applies_everything() -> None:
    assert clean_transcript("The audio says: 这是转录的文本内容", opencc="s2t") == "這是轉錄的文本內容"
    assert clean_transcript("這是轉錄的文本內容", opencc="t2s") == "这是转录的文本内容"
    assert clean_transcript("  这是  ") == "这是"


def test_join_pieces_spaces_latin_but_not_cjk() -> None:
    assert join_pieces(["Hello world.", "How are you?"]) == "Hello world. How are you?"
    assert join_pieces(["你好。", "", "世界"]) == "你好。世界"
    assert join_pieces(["", "  "]) == ""
