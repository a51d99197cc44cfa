"""Cuts land in pauses, segments are trimmed to their speech, and cue times match the speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_cuts import measure
from benchmarks.synthetic_speech import build_track
from serve.audio import SAMPLE_RATE, quietest_cut, speech_bounds, speech_segment


def burst(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def gap(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def test_cut_lands_in_the_longest_pause_near_the_limit() -> None:
    # speech 0-5, pause 5-5.15 (short), speech 5.15-7, pause 7-7.8 (long), speech 7.8-10
    samples = np.concatenate([burst(5), gap(0.15), burst(1.85), gap(0.8), burst(2.2)])
    cut = quietest_cut(samples) / SAMPLE_RATE
    assert 7.0 < cut < 7.8
    assert abs(cut - 7.4) < 0.05  # the middle of the pause


def test_no_pause_means_a_cut_at_the_limit() -> None:
    samples = burst(10)
    assert quietest_cut(samples) == samples.size


def test_trimming_keeps_exactly_the_speech_plus_padding() -> None:
    samples = np.concatenate([gap(1.0), burst(2.0), gap(1.5)])
    segment = speech_segment(3, samples, offset=10 * SAMPLE_RATE)
    assert segment.index == 3
    assert segment.cut_start == 10 and segment.cut_end == pytest.approx(14.5)
    assert segment.start == pytest.approx(11.0, abs=0.02) and segment.end == pytest.approx(13.0, abs=0.02)
    assert segment.samples.size == pytest.approx(2.2 * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)  # 0.1 s each side


def test_silence_and_noise_only_segments_have_no_speech() -> None:
    assert speech_bounds(gap(2)) is None
    silent = speech_segment(0, gap(2), 0)
    assert silent.is_silent() and silent.start == silent.end == 0 and silent.cut_end == 2
    hiss = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 1e-4).astype(np.float32)  # -80 dBFS
    assert speech_bounds(hiss) is None


def test_trimming_works_under_background_noise() -> None:
    noise = (np.random.default_rng(1).standard_normal(4 * SAMPLE_RATE) * 10 ** (-45 / 20)).astype(np.float32)
    samples = noise.copy()
    samples[SAMPLE_RATE: 3 * SAMPLE_RATE] += burst(2.0)
    first, last = speech_bounds(samples)  # type: ignore[misc]
    assert abs(first / SAMPLE_RATE - 1.0) < 0.03 and abs(last / SAMPLE_RATE - 3.0) < 0.03


@pytest.mark.parametrize("noise", [None, -45.0], ids=["clean", "noisy"])
def test_generated_speech_cuts_in_pauses_with_accurate_cues(tmp_path: Path, noise: float | None) -> None:
    track = tmp_path / "track.wav"
    intervals = build_track(track, 120, seed=3, noise_dbfs=noise)
    for seconds in (10.0, 30.0):
        result = measure(track, intervals, seconds)
        assert result["cuts"] >= 3
        assert result["share_in_pauses"] >= 0.95, result
        assert result["longest_segment_s"] <= seconds
        assert result["cue_start_error_max_s"] <= 0.1 and result["cue_end_error_max_s"] <= 0.1, result
