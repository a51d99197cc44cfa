"""Audio in: probe and decode anything ffmpeg reads into 16 kHz mono float32 segments with true times.

Decoding is streamed: ffmpeg resamples and downmixes, and this module reads its output one segment
at a time, so no stage holds the whole file's PCM.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_BYTES_PER_SAMPLE = 4  # float32
# Shorter than this, the audio encoder yields no token (3 mel frames are needed); nothing can be said in it.
MIN_SEGMENT_SECONDS = 0.05
# Peak below -60 dBFS: digital silence or dither, no speech to transcribe.
SILENCE_PEAK = 10 ** (-60 / 20)
PROBE_TIMEOUT_SECONDS = 60


class UndecodableAudio(Exception):
    """The file is not audio ffmpeg can decode (or has no audio stream)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    duration: float | None
    codec: str
    sample_rate: int | None
    channels: int | None


@dataclass(frozen=True)
class Segment:
    """A stretch of the input, as 16 kHz mono float32, with its true position in the file."""

    index: int
    start: float
    end: float
    samples: np.ndarray

    @property
    def duration(self) -> float:
        return self.end - self.start

    def is_silent(self) -> bool:
        return self.samples.size == 0 or float(np.max(np.abs(self.samples))) < SILENCE_PEAK


def _summarize_ffmpeg_error(stderr: str, path: Path) -> str:
    """ffmpeg's last meaningful complaint, without our file system paths in it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "ffmpeg could not decode the file"
    reason = lines[-1].replace(f"{path}: ", "").replace(str(path), "the file")
    return reason[:300]


def probe(path: Path) -> AudioInfo:
    """Describe the first audio stream of ``path``; raise :class:`UndecodableAudio` if there is none."""
    cmd = [
        "ffprobe", "-v", "error", "-select_streams", "a:0",
        "-show_entries", "stream=codec_name,sample_rate,channels,duration:format=duration",
        "-of", "json", str(path),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired as exc:
        raise UndecodableAudio("probing the file took too long") from exc
    if proc.returncode != 0:
        raise UndecodableAudio(_summarize_ffmpeg_error(proc.stderr, path))
    try:
        data = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise UndecodableAudio("ffprobe returned unreadable output") from exc
    streams = data.get("streams") or []
    if not streams:
        raise UndecodableAudio("no audio stream found")
    stream = streams[0]

    def number(value: object) -> float | None:
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

    duration = number(stream.get("duration")) or number((data.get("format") or {}).get("duration"))
    sample_rate = number(stream.get("sample_rate"))
    channels = number(stream.get("channels"))
    return AudioInfo(
        duration=duration,
        codec=str(stream.get("codec_name", "unknown")),
        sample_rate=int(sample_rate) if sample_rate else None,
        channels=int(channels) if channels else None,
    )


def decode_segments(path: Path, segment_seconds: float, scratch_dir: Path | None = None) -> Iterator[Segment]:
    """Yield consecutive segments of at most ``segment_seconds`` with their true start and end times.

    Raises :class:`UndecodableAudio` (possibly after some segments) if ffmpeg fails.
    """
    samples_per_segment = max(1, round(segment_seconds * SAMPLE_RATE))
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
        "-i", str(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1",
    ]
    # stderr goes to a file: a pipe nobody reads until the end could fill up and stall ffmpeg.
    with tempfile.TemporaryFile(dir=scratch_dir, prefix="ffmpeg-", suffix=".log") as stderr_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file)
        assert proc.stdout is not None
        try:
            offset = 0
            index = 0
            buffer = bytearray(samples_per_segment * _BYTES_PER_SAMPLE)
            while True:
                filled = _read_full(proc.stdout, buffer)
                usable = filled - filled % _BYTES_PER_SAMPLE
                if usable:
                    samples = np.frombuffer(buffer, dtype=np.float32, count=usable // _BYTES_PER_SAMPLE).copy()
                    start = offset / SAMPLE_RATE
                    offset += samples.size
                    if samples.size / SAMPLE_RATE >= MIN_SEGMENT_SECONDS:
                        yield Segment(index=index, start=start, end=offset / SAMPLE_RATE, samples=samples)
                        index += 1
                if filled < len(buffer):
                    break
            returncode = proc.wait()
            if returncode != 0:
                stderr_file.seek(0)
                stderr = stderr_file.read().decode("utf-8", errors="replace")
                raise UndecodableAudio(_summarize_ffmpeg_error(stderr, path))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _read_full(stream, buffer: bytearray) -> int:  # type: ignore[no-untyped-def]
    """Fill ``buffer`` from ``stream`` until it is full or the stream ends; return the bytes read."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled
