#!/usr/bin/env python3
"""Decode + segmentation versus a plain ffmpeg decode of the same file, and the memory it takes.

For each length it builds a 44.1 kHz stereo MP3 of generated speech, then times
  baseline: ffmpeg -i in.mp3 -ac 1 -ar 16000 -f f32le -   (output discarded)
  ours:     serve.audio.decode_segments(in.mp3, 60 s): decode, find pauses, cut, trim
in fresh processes, and records the peak RSS our process reaches above its idle RSS (after imports).
Targets: time ratio <= 1.3, peak RSS above idle <= 200 MB and flat across lengths.

    python benchmarks/bench_decode.py                       # 1, 10 and 60 minutes
    python benchmarks/bench_decode.py --minutes 1 --json decode.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import report  # noqa: E402
from benchmarks.synthetic_speech import build_track  # noqa: E402

CONSUMER = """
import json, sys, time
sys.path.insert(0, {root!r})
from serve.audio import decode_segments

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: measure from idle, after the imports
idle = status("VmRSS")
started = time.monotonic()
segments = speech = 0
for segment in decode_segments({path!r}, {segment_seconds}):
    segments += 1
    speech += segment.samples.size
seconds = time.monotonic() - started
print(json.dumps({{"seconds": seconds, "segments": segments, "idle_kb": idle, "peak_kb": status("VmHWM")}}))
"""


def make_mp3(out: Path, minutes: float, seed_track: Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(seed_track),
                    "-t", str(minutes * 60), "-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k",
                    str(out)], check=True)


def time_ffmpeg(path: Path) -> float:
    started = time.monotonic()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-ac", "1", "-ar", "16000",
                    "-f", "f32le", "-"], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def run_ours(path: Path, segment_seconds: float) -> dict:
    code = CONSUMER.format(root=str(ROOT), path=str(path), segment_seconds=segment_seconds)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def measure(minutes: float, seed_track: Path, work: Path, segment_seconds: float, repeats: int) -> dict:
    mp3 = work / f"speech-{minutes:g}min.mp3"
    make_mp3(mp3, minutes, seed_track)
    baseline = min(time_ffmpeg(mp3) for _ in range(repeats))
    runs = [run_ours(mp3, segment_seconds) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    rss_above_idle = max(r["peak_kb"] - r["idle_kb"] for r in runs) / 1024
    return {
        "minutes": minutes,
        "mp3_mb": round(mp3.stat().st_size / 1e6, 1),
        "ffmpeg_s": round(baseline, 2),
        "ours_s": round(best["seconds"], 2),
        "ratio": round(best["seconds"] / baseline, 3),
        "segments": best["segments"],
        "peak_rss_above_idle_mb": round(rss_above_idle, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--segment-seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed.wav"
        build_track(seed, 180, seed=5, noise_dbfs=-50)
        for minutes in args.minutes:
            rows.append(measure(minutes, seed, Path(tmp), args.segment_seconds, args.repeats))
            print(rows[-1], file=sys.stderr, flush=True)
    report(rows, args.json)
    ok = all(r["ratio"] <= 1.3 and r["peak_rss_above_idle_mb"] <= 200 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
