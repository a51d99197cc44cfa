#!/usr/bin/env python3
"""What word timestamps cost: the same file transcribed with and without the forced aligner, in one run.

The server's own path (:class:`serve.direct.DirectTranscriber`: decode, cut, batch runner, aligner slot,
post-processing) with ``word_timestamps`` on and off, alternating, the median of ``--repeats`` each. Printed:
the transcription time without and with alignment, their ratio (the target on a GPU: at most 1.15), the
aligner's own seconds (its share of the time without words is the steadier figure where timing is noisy)
and real-time factor, and its weights' memory. Without checkpoints it builds the
tiny random ones (same classes and layout as the published ones), where only the ratio's plumbing means
something: tiny weights make both models cheap in different proportions than the real ones.

    python benchmarks/bench_alignment.py                                   # tiny checkpoints, CPU
    python benchmarks/bench_alignment.py --checkpoint Qwen/Qwen2.5-Omni-7B-AWQ \\
        --aligner Qwen/Qwen3-ForcedAligner-0.6B-hf --audio talk.wav --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks.report import report  # noqa: E402
from serve.config import parse_args  # noqa: E402
from serve.direct import DirectTranscriber  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="the Omni checkpoint (default: a tiny AWQ one, built here)")
    parser.add_argument("--aligner", help="the aligner checkpoint (default: a tiny one, built here)")
    parser.add_argument("--audio", type=Path, help="the file to transcribe (default: generated speech)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the generated speech")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--segment-duration", default="30")
    parser.add_argument("--max-new-tokens", default="64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        checkpoint, aligner = args.checkpoint, args.aligner
        if checkpoint is None or aligner is None:
            import build_tiny_aligner
            import build_tiny_checkpoints

            checkpoint = checkpoint or str(build_tiny_checkpoints.build(work_dir)[1])
            aligner = aligner or str(build_tiny_aligner.build_aligner(work_dir))
        audio = args.audio
        if audio is None:
            from benchmarks.synthetic_speech import build_track

            audio = work_dir / "speech.wav"
            build_track(audio, args.seconds)
        settings = parse_args(["--checkpoint-path", checkpoint, "--aligner-path", aligner, "--device", args.device,
                               "--local-model", "--max-new-tokens", args.max_new_tokens])
        transcriber = DirectTranscriber(settings, work_dir)
        transcriber.load()
        form = {"temperature": "0", "segment_duration": args.segment_duration}
        transcriber.transcribe(audio, word_timestamps="true", **form)  # loads the aligner; warms both up
        plain, aligned, align_seconds = [], [], []
        for _ in range(args.repeats):
            plain.append(transcriber.transcribe(audio, word_timestamps="false", **form).seconds)
            before = transcriber.aligner.align_seconds
            result = transcriber.transcribe(audio, word_timestamps="true", **form)
            aligned.append(result.seconds)
            align_seconds.append(transcriber.aligner.align_seconds - before)
        memory = transcriber.aligner.memory_bytes()
        transcriber.close()
    without, with_words, aligning = (statistics.median(x) for x in (plain, aligned, align_seconds))
    report([{
        "audio_s": round(result.audio_seconds, 1),
        "without_words_s": round(without, 3),
        "with_words_s": round(with_words, 3),
        "ratio": round(with_words / without, 3),
        "aligner_s": round(aligning, 3),
        "aligner_share": round(aligning / without, 3),
        "aligner_rtf": round(aligning / result.audio_seconds, 4),
        "aligner_memory_mb": round(memory / 1024**2, 1),
    }], args.json, width=18)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
