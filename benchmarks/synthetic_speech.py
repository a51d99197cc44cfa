"""Generated speech with known pauses: espeak-ng sentences joined by silences of known length.

Used by the cut-quality benchmark and its short form in the tests: because the track is built here, the
exact time span of every sentence is known, so one can check that segment cuts land in pauses and that
subtitle cues start and end where the speech does.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

RATE = 16000

SENTENCES = [
    "The meeting started at nine in the morning.",
    "Everyone agreed that the new design was an improvement.",
    "Please send the report before Friday afternoon.",
    "We will need more time to test the server under load.",
    "The weather was cold, but the sky was clear.",
    "Transcription quality depends on clean audio.",
    "She asked whether the subtitles were in sync with the video.",
    "Thank you all for joining the call today.",
    "Numbers like one hundred and twenty three are read aloud.",
    "The model runs on a single graphics card.",
]


def _espeak(text: str, work: Path, voice_speed: int) -> np.ndarray:
    raw = work / "clip.wav"
    pcm = work / "clip16k.wav"
    subprocess.run(["espeak-ng", "-s", str(voice_speed), "-w", str(raw), text], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(raw), "-ac", "1", "-ar",
                    str(RATE), "-sample_fmt", "s16", str(pcm)], check=True)
    with wave.open(str(pcm)) as f:
        samples = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(samples) > 1e-3)
    return samples[loud[0]: loud[-1] + 1]  # exactly the speech: espeak's own edge silence removed


def build_track(out: Path, seconds: float, *, seed: int = 0, min_pause: float = 0.3, max_pause: float = 1.5,
                noise_dbfs: float | None = None) -> list[tuple[float, float]]:
    """Write a 16 kHz mono WAV of about ``seconds``; return the (start, end) of every sentence in it."""
    rng = random.Random(seed)
    pieces: list[np.ndarray] = []
    intervals: list[tuple[float, float]] = []
    position = 0
    with tempfile.TemporaryDirectory() as tmp:
        clips = {(text, speed): _espeak(text, Path(tmp), speed) for text in SENTENCES for speed in (150, 175)}
        while position / RATE < seconds:
            pause = np.zeros(round(rng.uniform(min_pause, max_pause) * RATE), dtype=np.float32)
            clip = clips[(rng.choice(SENTENCES), rng.choice((150, 175)))]
            pieces += [pause, clip]
            position += pause.size
            intervals.append((position / RATE, (position + clip.size) / RATE))
            position += clip.size
        tail = np.zeros(round(rng.uniform(min_pause, max_pause) * RATE), dtype=np.float32)
        track = np.concatenate([*pieces, tail])
    if noise_dbfs is not None:
        noise = np.random.default_rng(seed).standard_normal(track.size).astype(np.float32)
        track += noise * 10 ** (noise_dbfs / 20)
    with wave.open(str(out), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes((np.clip(track, -1, 1) * 32767).astype("<i2").tobytes())
    return intervals


def in_pause(t: float, intervals: list[tuple[float, float]]) -> bool:
    return not any(start < t < end for start, end in intervals)


def expected_speech(cut_start: float, cut_end: float, intervals: list[tuple[float, float]]
                    ) -> tuple[float, float] | None:
    """Where speech starts and ends within [cut_start, cut_end], by construction."""
    inside = [(max(s, cut_start), min(e, cut_end)) for s, e in intervals if s < cut_end and e > cut_start]
    return (inside[0][0], inside[-1][1]) if inside else None
