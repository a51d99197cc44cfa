"""python -m serve.client against the real server: progress, results next to the inputs, exit status."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import srt

from tests.conftest import ROOT
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path) -> Iterator[Server]:
    with tiny_server(tmp_path_factory.mktemp("client"), tiny_awq_checkpoint, "--api-key", "client-key") as server:
        yield server


def run_client(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "serve.client", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=180)


def test_transcribes_several_files_into_subtitles(server: Server, audio_dir: Path, tmp_path: Path) -> None:
    for name in ("speech.mp3", "tone.wav"):
        shutil.copy(audio_dir / name, tmp_path / name)
    result = run_client("speech.mp3", "tone.wav", "--format", "srt", "--language", "en", "--segment-duration",
                        "2", "--url", server.url, "--api-key", "client-key", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for stem in ("speech", "tone"):
        cues = list(srt.parse((tmp_path / f"{stem}.srt").read_text(encoding="utf-8")))
        assert cues
    assert "100%" in result.stderr  # the progress bars reached the end
    assert result.stdout.count("ok ") == 2


@pytest.mark.parametrize("fmt", ["txt", "vtt", "json"])
def test_other_formats_and_output_dir(server: Server, audio_dir: Path, tmp_path: Path, fmt: str) -> None:
    result = run_client(str(audio_dir / "speech.wav"), "--format", fmt, "--output-dir", "out", "--url", server.url,
                        "--api-key", "client-key", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "out" / f"speech.{fmt}"
    # Random weights may well transcribe a clip as nothing: a txt file then rightly holds nothing.
    assert written.is_file() and (fmt == "txt" or written.stat().st_size > 0)


def test_failures_give_a_non_zero_exit(server: Server, audio_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.mp3").write_text("not audio at all\n" * 20)
    shutil.copy(audio_dir / "speech.wav", tmp_path / "good.wav")
    (tmp_path / "good.txt").write_text("an older result")
    result = run_client("notes.mp3", "good.wav", "missing.wav", "--url", server.url, "--api-key", "client-key",
                        cwd=tmp_path)
    assert result.returncode == 1
    assert "failed  notes.mp3" in result.stderr and "decoded" in result.stderr
    assert "good.txt exists" in result.stderr and "missing.wav: no such file" in result.stderr
    assert (tmp_path / "good.txt").read_text() == "an older result"  # not overwritten without --overwrite
    denied = run_client("good.wav", "--overwrite", "--url", server.url, "--api-key", "wrong", cwd=tmp_path)
    assert denied.returncode == 1 and "API key" in denied.stderr
