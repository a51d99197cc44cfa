"""Audio in: probe and decode anything ffmpeg reads into 16 kHz mono float32 segments with true times.

Decoding is streamed: ffmpeg resamples and downmixes, and this module reads its output one segment at a
time, so no stage holds the whole file's PCM. Segments end in the quietest pause before the length limit
(energy-based), are trimmed to their speech, and keep the times of both.
"""

from __future__ import annotations

import json
import logging
import select
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
# Cuts: the quietest CUT_WINDOW_SECONDS within the last CUT_SEARCH_SECONDS before the length limit, if it is
# at least CUT_MIN_DIP quieter (in energy) than that stretch's median.
CUT_SEARCH_SECONDS = 10.0
CUT_WINDOW_SECONDS = 0.2
CUT_MIN_DIP = 0.25
# Trimming: a 20 ms frame is speech if it is TRIM_ABOVE_FLOOR_DB above the segment's noise floor (its
# quietest tenth) and no more than TRIM_BELOW_PEAK_DB below its loudest frame. The model still gets
# TRIM_PADDING_SECONDS of audio around the speech, so that soft onsets and tails are not clipped.
TRIM_ABOVE_FLOOR_DB = 10.0
TRIM_BELOW_PEAK_DB = 35.0
TRIM_PADDING_SECONDS = 0.1
PROBE_TIMEOUT_SECONDS = 60
# A decode that produces no audio for this long is stopped (a hostile or broken file keeping ffmpeg busy).
DECODE_STALL_SECONDS = 60.0
# Uploads are hostile: ffmpeg may open nothing but the uploaded file itself (no network, no nested URLs).
PROTOCOL_WHITELIST = ["-protocol_whitelist", "file"]
# Containers accepted (ffprobe's format names): audio and video files. Playlists and other formats that
# point ffmpeg at further files or URLs (hls, dash, concat, image sequences, ...) are refused.
ACCEPTED_FORMATS = frozenset({
    "wav", "w64", "rf64", "mp3", "mp2", "flac", "ogg", "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska",
    "webm", "aac", "asf", "avi", "aiff", "au", "caf", "amr", "amrnb", "amrwb", "ac3", "eac3", "dts", "truehd",
    "mpeg", "mpegts", "flv", "wv", "ape", "tta", "voc", "rm", "mpc", "mpc8", "wsaud", "xwma", "shn", "tak",
    "dsf", "gsm", "g722", "g723_1", "g729", "ircam", "mlp", "nut", "oma", "qcp", "sox", "spdif", "wve",
})


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
    """A stretch of the input, as 16 kHz mono float32, with its true position in the file.

    ``cut_start``/``cut_end`` bound the part of the file this segment was cut from; ``start``/``end`` bound the
    speech in it. ``samples`` is that speech with a little padding (``TRIM_PADDING_SECONDS``) on each side.
    A segment with no speech has no samples and ``start == end``.
    """

    index: int
    start: float
    end: float
    samples: np.ndarray
    cut_start: float = 0.0
    cut_end: float = 0.0
    samples_start: float | None = None  # where ``samples`` begins in the file (None: at ``start``)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def audio_start(self) -> float:
        """The file time of ``samples[0]``: what times measured in the samples are relative to."""
        return self.start if self.samples_start is None else self.samples_start

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
        "ffprobe", "-v", "error", *PROTOCOL_WHITELIST, "-select_streams", "a:0",
        "-show_entries", "stream=codec_name,sample_rate,channels,duration:format=duration,format_name",
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
    container = str((data.get("format") or {}).get("format_name", ""))
    if not ACCEPTED_FORMATS.intersection(container.split(",")):
        raise UndecodableAudio(f"{container or 'this'} files are not accepted: send an audio or video file")
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
    """Yield consecutive segments of at most ``segment_seconds``, cut in pauses, with their true times.

    Raises :class:`UndecodableAudio` (possibly after some segments) if ffmpeg fails.
    """
    max_samples = max(1, round(segment_seconds * SAMPLE_RATE))
    index = 0
    offset = 0  # file position (in samples) of pending[0]
    pending = np.empty(0, dtype=np.float32)
    for block in decode_pcm(path, scratch_dir, block_samples=max_samples):
        pending = np.concatenate([pending, block]) if pending.size else block
        while pending.size > max_samples:
            cut = quietest_cut(pending[:max_samples])
            yield speech_segment(index, pending[:cut], offset)
            index += 1
            pending = pending[cut:]
            offset += cut
    if pending.size / SAMPLE_RATE >= MIN_SEGMENT_SECONDS:
        yield speech_segment(index, pending, offset)


def decode_pcm(path: Path, scratch_dir: Path | None = None, block_samples: int = SAMPLE_RATE * 30
               ) -> Iterator[np.ndarray]:
    """ffmpeg's 16 kHz mono float32 decoding of ``path``, in blocks of ``block_samples`` (the last may be short)."""
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *PROTOCOL_WHITELIST,
        "-i", str(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1",
    ]
    # stderr goes to a file: a pipe nobody reads until the end could fill up and stall ffmpeg.
    with tempfile.TemporaryFile(dir=scratch_dir, prefix="ffmpeg-", suffix=".log") as stderr_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file, bufsize=0)
        assert proc.stdout is not None
        _widen_pipe(proc.stdout.fileno())
        try:
            while True:
                buffer = bytearray(block_samples * _BYTES_PER_SAMPLE)
                filled = _read_full(proc.stdout, buffer)
                usable = filled - filled % _BYTES_PER_SAMPLE
                if usable:
                    yield np.frombuffer(buffer, dtype=np.float32, count=usable // _BYTES_PER_SAMPLE)
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


def _window_energy(samples: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Mean square of ``samples`` over windows of ``window`` samples, every ``hop`` samples."""
    squares = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    starts = np.arange(0, samples.size - window + 1, hop)
    return (squares[starts + window] - squares[starts]) / window


def quietest_cut(samples: np.ndarray) -> int:
    """Where to end a segment that may not exceed ``len(samples)``: in the quietest pause near its end.

    The search covers the second half of the segment (at most the last ``CUT_SEARCH_SECONDS``); among the
    runs of quietest windows it takes the longest pause and cuts in its middle. Audio without a clear dip
    (music, a tone) is cut at the limit.
    """
    limit = samples.size
    search = min(round(CUT_SEARCH_SECONDS * SAMPLE_RATE), limit // 2)
    window = min(round(CUT_WINDOW_SECONDS * SAMPLE_RATE), search)
    hop = max(1, round(0.01 * SAMPLE_RATE))
    if window < hop:
        return limit
    region_start = limit - search
    energy = _window_energy(samples[region_start:], window, hop)
    if energy.size == 0:
        return limit
    quietest = float(energy.min())
    if quietest > float(np.median(energy)) * CUT_MIN_DIP:
        return limit  # nothing stands out as a pause
    quiet = np.concatenate([[False], energy <= quietest * 2 + 1e-12, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    runs = list(zip(edges[::2], edges[1::2] - 1, strict=True))  # (first, last) window of each quiet run
    # The longest pause is the likeliest sentence boundary; among equals, the latest keeps segments long.
    first, last = max(runs, key=lambda run: (run[1] - run[0], run[1]))
    return region_start + (first + last) // 2 * hop + window // 2


def speech_bounds(samples: np.ndarray) -> tuple[int, int] | None:
    """The first and last sample of speech in ``samples``, or None if there is none."""
    frame = round(0.02 * SAMPLE_RATE)
    if samples.size < frame:
        loud = samples.size and float(np.max(np.abs(samples))) >= SILENCE_PEAK
        return (0, samples.size) if loud else None
    energy = _window_energy(samples, frame, frame)
    peak = float(energy.max())
    floor = float(np.percentile(energy, 10))
    threshold = max(floor * 10 ** (TRIM_ABOVE_FLOOR_DB / 10), peak * 10 ** (-TRIM_BELOW_PEAK_DB / 10),
                    SILENCE_PEAK**2)
    threshold = min(threshold, peak / 4)  # evenly loud audio (music, a tone) is all "speech"
    voiced = np.flatnonzero(energy >= threshold)
    if voiced.size == 0 or peak < SILENCE_PEAK**2:
        return None
    first = int(voiced[0]) * frame
    last = (int(voiced[-1]) + 1) * frame
    if samples.size - last < frame:
        last = samples.size  # keep the tail that did not fill a whole frame
    return first, last


def speech_segment(index: int, samples: np.ndarray, offset: int) -> Segment:
    """A segment for ``samples`` (starting at file sample ``offset``), trimmed to its speech."""
    cut_start, cut_end = offset / SAMPLE_RATE, (offset + samples.size) / SAMPLE_RATE
    bounds = speech_bounds(samples)
    if bounds is None:
        return Segment(index, cut_start, cut_start, np.empty(0, dtype=np.float32), cut_start, cut_end)
    first, last = bounds
    pad = round(TRIM_PADDING_SECONDS * SAMPLE_RATE)
    padded_from = max(0, first - pad)
    padded = samples[padded_from: min(samples.size, last + pad)]
    return Segment(index, (offset + first) / SAMPLE_RATE, (offset + last) / SAMPLE_RATE,
                   np.ascontiguousarray(padded), cut_start, cut_end, (offset + padded_from) / SAMPLE_RATE)


def _widen_pipe(fd: int) -> None:
    """Grow the pipe from ffmpeg to 1 MiB (Linux): fewer wake-ups and context switches per second of audio."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass  # not Linux, or a lower pipe-max-size: the default pipe works, a little slower


def _read_full(stream, buffer: bytearray, stall_seconds: float = DECODE_STALL_SECONDS) -> int:  # type: ignore[no-untyped-def]
    """Fill ``buffer`` from ``stream`` until it is full or the stream ends; return the bytes read. Raises
    :class:`UndecodableAudio` when nothing arrives for ``stall_seconds``."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        readable, _, _ = select.select([stream], [], [], stall_seconds)
        if not readable:
            raise UndecodableAudio(f"decoding stopped producing audio for {stall_seconds:.0f} s")
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled
