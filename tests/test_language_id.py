"""Language identification of transcripts (py3langid), for answers to requests that named no language."""

from __future__ import annotations

import pytest

from serve.language_id import detect, openai_name, transcript_language


@pytest.mark.parametrize(("text", "code"), [
    ("The quick brown fox jumps over the lazy dog.", "en"),
    ("今天天气很好，我们去公园散步吧。", "zh"),
    ("這是一個測試，我們明天見。", "zh"),
    ("こんにちは、今日はいい天気ですね。", "ja"),
    ("안녕하세요, 만나서 반갑습니다.", "ko"),
    ("Bonjour tout le monde, comment ça va aujourd'hui ?", "fr"),
    ("Guten Morgen, wie geht es Ihnen heute?", "de"),
    ("Привет, как у тебя дела сегодня?", "ru"),
])
def test_a_sentence_is_identified(text: str, code: str) -> None:
    assert detect(text) == code


def test_too_little_text_is_unknown_not_guessed() -> None:
    assert detect("") is None and detect("hello") is None and detect("  ok  ") is None
    assert openai_name(None) == "unknown"


def test_a_named_language_wins_and_names_take_openais_form() -> None:
    assert transcript_language("ja", "The quick brown fox jumps over the lazy dog.") == "ja"
    assert transcript_language("auto", "The quick brown fox jumps over the lazy dog.") == "en"
    assert openai_name("zh") == "chinese" and openai_name("yue") == "cantonese" and openai_name("en") == "english"
