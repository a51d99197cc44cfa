"""Saved transcripts never overwrite each other, even when written in the same second."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve.outputs import OutputStore


def test_concurrent_saves_get_distinct_files(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "outputs")
    with ThreadPoolExecutor(8) as pool:
        names = list(pool.map(lambda i: store.save(f"transcript {i}\n", "txt"), range(200)))
    assert len(set(names)) == 200
    assert all(re.fullmatch(r"\d{14}_[0-9a-f]{8}\.txt", n) for n in names)
    contents = {(tmp_path / "outputs" / n).read_text() for n in names}
    assert contents == {f"transcript {i}\n" for i in range(200)}


def test_saved_text_is_utf8(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    name = store.save("這是轉錄的文本內容\n", "srt")
    assert name.endswith(".srt")
    assert (tmp_path / name).read_bytes().decode("utf-8") == "這是轉錄的文本內容\n"
