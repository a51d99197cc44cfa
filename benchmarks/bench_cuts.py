#!/usr/bin/env python3
"""Cut quality on generated speech with known pauses: share of cuts in pauses, SRT cue timing error.

    python benchmarks/bench_cuts.py                      # 10 minutes of speech, clean and with noise
    python benchmarks/bench_cuts.py --minutes 2 --json cuts.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import report  # noqa: E402
from benchmarks.synthetic_speech import build_track, expected_speech, in_pause  # noqa: E402
from serve.audio import decode_segments  # noqa: E402


def measure(track: Path, intervals: list[tuple[float, float]], segment_seconds: float) -> dict:
    segments = list(decode_segments(track, segment_seconds))
    cuts = [s.cut_end for s in segments[:-1]]
    in_pauses = sum(in_pause(t, intervals) for t in cuts)
    start_errors, end_errors = [], []
    for segment in segments:
        expected = expected_speech(segment.cut_start, segment.cut_end, intervals)
        if expected is None or segment.is_silent():
            continue
        start_errors.append(abs(segment.start - expected[0]))
        end_errors.append(abs(segment.end - expected[1]))
    return {
        "segment_seconds": segment_seconds,
        "segments": len(segments),
        "cuts": len(cuts),
        "cuts_in_pauses": in_pauses,
        "share_in_pauses": round(in_pauses / len(cuts), 4) if cuts else 1.0,
        "longest_segment_s": round(max(s.cut_end - s.cut_start for s in segments), 2),
        "cue_start_error_mean_s": round(statistics.fmean(start_errors), 3),
        "cue_start_error_max_s": round(max(start_errors), 3),
        "cue_end_error_mean_s": round(statistics.fmean(end_errors), 3),
        "cue_end_error_max_s": round(max(end_errors), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--segment-seconds", type=float, nargs="+", default=[10.0, 30.0, 60.0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for noise in (None, -45.0):
            track = Path(tmp) / "track.wav"
            started = time.monotonic()
            intervals = build_track(track, args.minutes * 60, seed=1, noise_dbfs=noise)
            built = time.monotonic() - started
            for seconds in args.segment_seconds:
                row = {"noise_dbfs": noise, **measure(track, intervals, seconds)}
                rows.append(row)
            print(f"(track of {len(intervals)} sentences built in {built:.1f} s)", file=sys.stderr)
    report(rows, args.json)
    return 0 if all(r["share_in_pauses"] >= 0.95 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
