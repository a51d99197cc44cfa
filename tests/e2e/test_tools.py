"""The real-model tools on a tiny checkpoint: scripts/smoke_gpu.py and scripts/evaluate.py, run as a user runs them.

Random weights transcribe gibberish, so the smoke test must fail its word check here, and the evaluation's figures
are meaningless: these tests check the exit statuses, the reports and that their arithmetic adds up.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serve.evaluation import normalize
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import TEST_MAX_NEW_TOKENS

ROOT = Path(__file__).resolve().parents[2]
CLIPS = ROOT / "scripts" / "smoke" / "clips.json"
TOKENS = ["--max-new-tokens", str(TEST_MAX_NEW_TOKENS)]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def smoke_run(tiny_awq_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[
        subprocess.CompletedProcess, dict]:
    """One smoke test of the shipped clips on the tiny checkpoint: (the process, its JSON report)."""
    report_path = tmp_path_factory.mktemp("smoke") / "smoke.json"
    result = run("smoke_gpu.py", "--checkpoint-path", str(tiny_awq_checkpoint), "--device", "cpu", *TOKENS,
                 "--json", str(report_path))
    return result, json.loads(report_path.read_text())


def test_smoke_reports_everything_and_fails_the_word_check_on_random_weights(smoke_run: tuple) -> None:
    result, report = smoke_run
    assert result.returncode == 1, result.stdout + result.stderr
    assert "loaded in" in result.stdout and "english.mp3: RTF" in result.stdout and "mandarin.mp3: RTF" in result.stdout
    assert "lacks expected words" in result.stderr and "What to check" in result.stderr
    assert report["status"] == "failed" and report["load_seconds"] > 0
    assert [clip["file"] for clip in report["clips"]] == ["english.mp3", "mandarin.mp3"]
    for clip in report["clips"]:
        assert clip["audio_seconds"] > 5 and clip["real_time_factor"] == pytest.approx(
            clip["seconds"] / clip["audio_seconds"], abs=0.002)
        assert not clip["passed"] and clip["missing"]


def test_smoke_passes_when_the_transcripts_hold_the_expected_words(smoke_run: tuple, tiny_awq_checkpoint: Path,
                                                                   tmp_path: Path) -> None:
    # Greedy decoding is deterministic: expect, in a copy of the clips, words the tiny model is known to say.
    said = {clip["file"]: clip["transcript"] for clip in smoke_run[1]["clips"]}
    manifest = json.loads(CLIPS.read_text())
    for clip in manifest["clips"]:
        shutil.copy(CLIPS.parent / clip["file"], tmp_path / clip["file"])
        words = normalize(said[clip["file"]], clip["language"])
        clip["expected"] = [words[:2]] if clip["language"] == "zh" else words.split()[:1]
        assert clip["expected"] and clip["expected"][0], said
    (tmp_path / "clips.json").write_text(json.dumps(manifest))
    result = run("smoke_gpu.py", "--clips", str(tmp_path / "clips.json"), "--checkpoint-path",
                 str(tiny_awq_checkpoint), "--device", "cpu", *TOKENS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 3 and "PASSED" in result.stdout


def test_smoke_without_a_gpu_or_with_a_broken_checkpoint_says_what_to_check(tiny_awq_checkpoint: Path,
                                                                           tmp_path: Path) -> None:
    result = run("smoke_gpu.py", "--checkpoint-path", str(tiny_awq_checkpoint))  # --device auto: wants CUDA
    assert result.returncode == 2
    assert "CUDA is not available" in result.stderr and "nvidia-smi" in result.stderr
    broken = tmp_path / "broken"
    shutil.copytree(tiny_awq_checkpoint, broken)
    for shard in broken.glob("*.safetensors"):
        shard.unlink()
    result = run("smoke_gpu.py", "--checkpoint-path", str(broken), "--device", "cpu")
    assert result.returncode == 2
    assert "FAILED while loading the checkpoint" in result.stderr and "hf download" in result.stderr


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped clips with their references, as a CSV manifest beside them."""
    folder = tmp_path_factory.mktemp("manifest")
    clips = json.loads(CLIPS.read_text())["clips"]
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["audio", "text"])  # no language column: guessed from the reference's script
        for clip in clips:
            shutil.copy(CLIPS.parent / clip["file"], folder / clip["file"])
            writer.writerow([clip["file"], clip["text"]])
    return folder / "manifest.csv"


def check_report(report: dict) -> None:
    rows, summary = report["rows"], report["summary"]
    assert [(Path(r["file"]).name, r["language"], r["metric"]) for r in rows] == [
        ("english.mp3", "en", "WER"), ("mandarin.mp3", "zh", "CER")]
    for row in rows:
        assert row["rate"] == pytest.approx(row["errors"] / row["reference_length"], abs=1e-4)
    assert rows[0]["reference_length"] == 17  # the English reference's words, after normalization
    assert rows[1]["reference_length"] == 28  # the Chinese reference's characters, punctuation removed
    assert summary["wer"] == pytest.approx(rows[0]["errors"] / 17, abs=1e-4)
    assert summary["cer"] == pytest.approx(rows[1]["errors"] / 28, abs=1e-4)
    assert summary["audio_seconds"] == pytest.approx(sum(r["audio_seconds"] for r in rows), abs=0.02)
    assert summary["real_time_factor"] == pytest.approx(summary["seconds"] / summary["audio_seconds"], abs=1e-3)


def test_evaluate_through_the_engine_and_through_a_server_gives_the_same_transcripts(
        manifest: Path, tiny_awq_checkpoint: Path, tmp_path: Path) -> None:
    direct = tmp_path / "direct.json"
    result = run("evaluate.py", str(manifest), "--json", str(direct), "--",
                 "--checkpoint-path", str(tiny_awq_checkpoint), "--device", "cpu", *TOKENS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WER" in result.stdout and "real-time factor" in result.stdout
    direct_report = json.loads(direct.read_text())
    check_report(direct_report)

    served = tmp_path / "served.json"
    with tiny_server(tmp_path / "server", tiny_awq_checkpoint) as server:
        result = run("evaluate.py", str(manifest), "--server", server.url, "--json", str(served))
    assert result.returncode == 0, result.stdout + result.stderr
    served_report = json.loads(served.read_text())
    check_report(served_report)
    assert [r["hypothesis"] for r in served_report["rows"]] == [r["hypothesis"] for r in direct_report["rows"]]
    assert [r["errors"] for r in served_report["rows"]] == [r["errors"] for r in direct_report["rows"]]


def test_evaluate_reads_jsonl_and_librispeech_layouts(tiny_awq_checkpoint: Path, tmp_path: Path) -> None:
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1089" / "134686"
    chapter.mkdir(parents=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(CLIPS.parent / "english.mp3"),
                    str(chapter / "1089-134686-0000.flac")], check=True)
    (chapter / "1089-134686.trans.txt").write_text("1089-134686-0000 THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG\n")
    result = run("evaluate.py", "--librispeech", str(tmp_path / "LibriSpeech" / "test-clean"), "--json",
                 str(tmp_path / "ls.json"), "--", "--checkpoint-path", str(tiny_awq_checkpoint), "--device", "cpu",
                 *TOKENS)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads((tmp_path / "ls.json").read_text())["rows"]
    assert row["language"] == "en" and row["reference_length"] == 9

    jsonl = tmp_path / "manifest.jsonl"
    (tmp_path / "not-audio.wav").write_text("this is not audio")
    jsonl.write_text("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in (
        {"audio": str(chapter / "1089-134686-0000.flac"), "text": "你好", "language": "zh"},
        {"audio": "not-audio.wav", "text": "nothing"})))
    result = run("evaluate.py", str(jsonl), "--language", "en", "--json", str(tmp_path / "j.json"), "--",
                 "--checkpoint-path", str(tiny_awq_checkpoint), "--device", "cpu", *TOKENS)
    assert result.returncode == 1, result.stdout + result.stderr  # one file failed: reported, the other kept
    report = json.loads((tmp_path / "j.json").read_text())
    assert [row["language"] for row in report["rows"]] == ["en"]  # --language wins
    (failure,) = report["failures"]
    assert failure["file"].endswith("not-audio.wav") and "1 file(s) failed" in result.stderr

    missing = tmp_path / "missing.csv"
    missing.write_text("audio,text\nnope.wav,hello\n")
    result = run("evaluate.py", str(missing), "--", "--device", "cpu")
    assert result.returncode != 0 and "not found" in result.stderr
