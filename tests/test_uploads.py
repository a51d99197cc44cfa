"""Upload file names: safe display names, download names and RFC 6266 headers."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from serve.uploads import content_disposition, display_filename, download_name


@pytest.mark.parametrize(("raw", "shown"), [
    ("audio.mp3", "audio.mp3"), ("../../x.mp3", "x.mp3"), ("C:\\Users\\me\\录音 1.wav", "录音 1.wav"),
    ("", "audio"), (None, "audio"), ("a\x00b\n.mp3", "ab.mp3"), ("..", "audio"),
])
def test_display_filename(raw: str | None, shown: str) -> None:
    assert display_filename(raw) == shown


def test_long_names_keep_their_extension() -> None:
    name = display_filename("长" * 300 + ".mp3")
    assert len(name) <= 200 and name.endswith(".mp3")


@pytest.mark.parametrize(("upload", "expected"), [
    ("audio.mp3", "audio.txt"), ("会议记录.m4a", "会议记录.txt"), ("noext", "noext.txt"), ("a.b.c.wav", "a.b.c.txt"),
])
def test_download_name_follows_the_upload(upload: str, expected: str) -> None:
    assert download_name(upload, "txt") == expected


def test_content_disposition_keeps_unicode_names_intact() -> None:
    header = content_disposition("会议记录.txt")
    assert header.startswith('attachment; filename="HuiYiJiLu.txt"; ')  # the ASCII stand-in: a transliteration
    encoded = header.split("filename*=UTF-8''", 1)[1]
    assert unquote(encoded) == "会议记录.txt"
    assert content_disposition("audio.txt") == 'attachment; filename="audio.txt"'
    assert content_disposition('a"b.txt').startswith('attachment; filename="a_b.txt"; filename*=')


def test_non_ascii_names_get_distinct_recognisable_ascii_stand_ins() -> None:
    """curl -OJ saves the ASCII name: 會議記錄 2025.mp3 and 訪談 2025.mp3 both became 2025.txt."""
    def fallback(name: str) -> str:
        return content_disposition(name).split('filename="', 1)[1].split('"', 1)[0]

    assert fallback("會議記錄 2025.txt") == "HuiYiJiLu 2025.txt"
    assert fallback("訪談 2025.txt") == "FangTan 2025.txt"
    assert fallback("Привет.srt") == "Privet.srt" and fallback("café.vtt") == "cafe.vtt"
    assert fallback("🎤.txt").endswith(".txt") and '"' not in fallback('說"明.txt')
