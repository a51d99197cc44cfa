"""Audio: probing and streamed decoding of real containers into 16 kHz mono segments with true times."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from serve.audio import SAMPLE_RATE, UndecodableAudio, decode_segments, probe


@pytest.mark.parametrize("name", ["speech.wav", "speech.mp3", "speech.m4a", "speech.flac", "speech.ogg",
                                  "speech_video.mp4"])
def test_every_container_decodes(audio_dir: Path, name: str) -> None:
    info = probe(audio_dir / name)
    assert info.duration and info.duration > 1
    segments = list(decode_segments(audio_dir / name, 60))
    assert len(segments) == 1
    seg = segments[0]
    assert seg.samples.dtype == np.float32 and seg.samples.ndim == 1
    assert seg.cut_start == 0 and abs(seg.cut_end - info.duration) < 0.15
    # espeak-ng pads its speech with silence: the segment keeps the speech, and its times say where it is.
    assert 0 <= seg.start < 0.3 and seg.cut_end - 0.6 < seg.end <= seg.cut_end
    speech = round((seg.end - seg.start) * SAMPLE_RATE)
    assert speech <= seg.samples.size <= speech + round(0.2 * SAMPLE_RATE)  # plus the padding
    assert not seg.is_silent()


def test_continuous_sound_is_cut_at_the_limit_with_true_times(audio_dir: Path) -> None:
    segments = list(decode_segments(audio_dir / "tone.wav", 2.0))  # 7.3 s at 44.1 kHz: no pause anywhere
    assert [s.index for s in segments] == [0, 1, 2, 3]
    assert [s.start for s in segments] == [0.0, 2.0, 4.0, 6.0]
    assert segments[-1].end == pytest.approx(7.3, abs=0.01)  # the real end, not 8.0
    for a, b in itertools.pairwise(segments):
        assert a.end == b.start
    assert sum(s.samples.size for s in segments) == pytest.approx(7.3 * SAMPLE_RATE, abs=20)


def test_resampled_to_16k_mono(audio_dir: Path) -> None:
    (segment,) = decode_segments(audio_dir / "tone.wav", 60)
    spectrum = np.abs(np.fft.rfft(segment.samples))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / segment.samples.size
    assert peak_hz == pytest.approx(440, abs=2)


def test_silence_is_detected(audio_dir: Path) -> None:
    segments = list(decode_segments(audio_dir / "silence.wav", 60))
    assert segments and all(s.is_silent() for s in segments)


@pytest.mark.parametrize("content", [b"", b"this is not audio at all\n" * 50, b"RIFF\x00\x00\x00\x00WAVEjunk" * 10])
def test_undecodable_files_are_refused_with_a_reason(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.mp3"
    path.write_bytes(content)
    with pytest.raises(UndecodableAudio) as exc:
        probe(path)
    assert exc.value.reason and str(tmp_path) not in exc.value.reason


def test_decode_failure_raises(tmp_path: Path) -> None:
    path = tmp_path / "fake.wav"
    path.write_bytes(b"not audio" * 100)
    with pytest.raises(UndecodableAudio):
        list(decode_segments(path, 10))


def test_truncated_mp3_decodes_what_is_there(audio_dir: Path, tmp_path: Path) -> None:
    data = (audio_dir / "speech.mp3").read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    segments = list(decode_segments(cut, 60))
    total = sum(s.duration for s in segments)
    assert 0.5 < total < probe(audio_dir / "speech.mp3").duration


def test_stopping_early_kills_ffmpeg(audio_dir: Path) -> None:
    import psutil

    gen = decode_segments(audio_dir / "long_tone.wav", 1.0)
    next(gen)
    gen.close()
    children = [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]
    assert children == []


def test_a_decode_that_stops_producing_audio_is_stopped() -> None:
    import os

    from serve.audio import UndecodableAudio, _read_full

    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"\0" * 64)  # some audio, then nothing more (and no end of stream)
        with os.fdopen(read_end, "rb", buffering=0) as stream, \
                pytest.raises(UndecodableAudio, match="stopped producing audio"):
            _read_full(stream, bytearray(1024), stall_seconds=0.2)
    finally:
        os.close(write_end)
