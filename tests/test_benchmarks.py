"""Short forms of the benchmarks: the scripts run, produce their tables and meet their targets where the
target is meaningful at this size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=timeout)


def test_decode_benchmark_short(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    result = run("bench_decode.py", "--minutes", "2", "--repeats", "1", "--json", str(out))
    rows = json.loads(out.read_text())
    assert rows[0]["minutes"] == 2 and 2 <= rows[0]["segments"] <= 3, result.stderr  # cuts come before 60 s
    # Timing ratios on a shared 2-core CI machine are noisy: the 1.3x target is checked at 60 minutes by the
    # full benchmark (benchmarks/README.md); here, only that memory stays small.
    assert rows[0]["peak_rss_above_idle_mb"] < 200


def test_cut_benchmark_short(tmp_path: Path) -> None:
    out = tmp_path / "cuts.json"
    result = run("bench_cuts.py", "--minutes", "1", "--segment-seconds", "10", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(row["share_in_pauses"] >= 0.95 for row in json.loads(out.read_text()))


def test_serving_benchmark_short(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    result = run("bench_serving.py", "--minutes", "0.5", "--tokens", "8", "--segment-seconds", "10",
                 "--repeats", "1", "--batch-sizes", "2", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["serving"]["http_s"] > 0 and report["serving"]["health_probes"] > 0
    assert report["batching_bf16"]["batch2_identical"] and report["batching_awq"]["batch2_identical"]


def test_alignment_benchmark_short(tmp_path: Path) -> None:
    out = tmp_path / "alignment.json"
    result = run("bench_alignment.py", "--seconds", "12", "--segment-duration", "6", "--max-new-tokens", "8",
                 "--repeats", "1", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    row = json.loads(out.read_text())[0]
    assert row["with_words_s"] > 0 and row["without_words_s"] > 0 and row["aligner_s"] > 0
    assert row["aligner_memory_mb"] > 0


def test_gpu_benchmark_code_path_on_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    modes = ["awq_low_vram", "awq", "awq_fast", "bf16"]
    result = run("bench_gpu.py", "--tiny", "--device", "cpu", "--segments", "5", "--batches", "1", "2",
                 "--rtf-segment", "5", "--modes", *modes, "--crossover-rows", "16", "300", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert [key for key in report if key in modes] == modes
    for name in modes:
        assert report[name]["segment_5s"]["decode_tok_s"] > 0 and report[name]["rtf_batch2"] > 0
    assert report["low_vram_vs_normal"]["rtf_batch1_ratio"] > 0
    # The fast path: compiled at load, reloaded after an unload, compared with the eager path of the same run.
    assert report["awq_fast"]["compiled_decode"] and report["awq_fast"]["reload_s"] > 0
    assert report["awq_fast_vs_awq"]["rtf_batch1_speedup"] > 0
    assert {row["rows"] for row in report["dequant_crossover"]} == {16, 300}
    assert all(row["int4_ms"] > 0 and row["dequant_ms"] > 0 for row in report["dequant_crossover"])


def test_compile_benchmark_short(tmp_path: Path) -> None:
    out = tmp_path / "compile.json"
    # 40 tokens apart, median of 3: a per-token time that timing noise on a busy machine cannot turn negative.
    result = run("bench_compile.py", "--layers", "2", "--weights", "awq", "--short", "4", "--long", "44",
                 "--repeats", "3", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert [row["mode"] for row in rows] == ["eager", "static", "compiled"]
    # The static cache and the compiled decode step give today's tokens, token for token (greedy).
    assert all(row["tokens_equal_eager"] and row["per_token_ms"] > 0 for row in rows)


def test_scaleout_benchmark_short(tmp_path: Path) -> None:
    out = tmp_path / "scaleout.json"
    # Two workers only: one worker's run is the same code with one process fewer (tests/distributed covers it).
    result = run("bench_scaleout.py", "--minutes", "0.5", "--tokens", "8", "--workers", "2", "--repeats", "1",
                 "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert [(row["mode"], row["workers"]) for row in report["rows"]] == [("single process", 1), ("api + workers", 2)]
    assert all(row["same_text"] and row["seconds"] > 0 for row in report["rows"])  # same transcript every way


def test_fairness_benchmark_short(tmp_path: Path) -> None:
    out = tmp_path / "fairness.json"
    result = run("bench_fairness.py", "--minutes", "20", "--throughput-minutes", "2", "--long-jobs", "2",
                 "--repeats", "2", "--tokens", "8", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert [(row["mode"], row["long_jobs"]) for row in rows] == [("single", 2), ("scaleout", 2)]
    for row in rows:
        assert row["idle_short_s"] > 0 and row["first_short_s"] > 0 and row["long_audio_s_per_s"] > 0
        assert row["with_short_requests"] > 0


def test_slowloris_script_short(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "slowloris.py")
    refused = subprocess.run([sys.executable, script, "--url", "http://192.0.2.1:5000"], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "loopback" in refused.stderr  # a load tool for one's own server only
    out = tmp_path / "slowloris.json"
    result = subprocess.run([sys.executable, script, "--server", "werkzeug", "--clients", "0", "20", "--window",
                             "2", "--client-timeout", "4", "--repeats", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    idle, loaded = json.loads(out.read_text())
    assert idle["slow_clients"] == 0 and loaded["slow_clients"] == 20 and loaded["open_during_window"] == 20
    for row in (idle, loaded):
        assert row["health_failures"] == 0 and row["health_samples"] > 0 and row["normal_errors"] == []
    assert loaded["all_cut_off"] and loaded["answers"] == {"408": 20}
    assert "| werkzeug | 20 |" in result.stdout
