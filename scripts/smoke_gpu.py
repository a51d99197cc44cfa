#!/usr/bin/env python3
"""GPU smoke test for a real checkpoint: load it the server's way, transcribe two short clips, check the words.

    .venv/bin/python scripts/smoke_gpu.py --checkpoint-path Qwen/Qwen2.5-Omni-7B-AWQ --local-model
    .venv/bin/python scripts/smoke_gpu.py --checkpoint-path Qwen/Qwen2.5-Omni-7B-AWQ --local-model --low-vram

Clips are transcribed greedily (``--temperature 0``) so that runs are repeatable. Any server flag may follow
(``--device cuda:1``, ``--flash-attn2``, ``--low-vram``, ``--segment-duration``...).
Prints the device, load time, peak VRAM, each clip's real-time factor and transcript, and whether the expected
words are in it (case, punctuation and Chinese script ignored). Exit status: 0 when everything passed; 1 when a
transcript lacks expected words; 2 when the GPU, the checkpoint or loading failed. Each failure says what to
check.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from serve.config import Settings, build_parser, parse_args  # noqa: E402
from serve.direct import DirectTranscriber  # noqa: E402
from serve.engines.runtime import pick_device  # noqa: E402
from serve.evaluation import contains_words  # noqa: E402

CLIPS = ROOT / "scripts" / "smoke" / "clips.json"
GIB = 1024**3

HINT_CUDA = ("PyTorch sees no CUDA device. Check: `nvidia-smi` works (driver installed and loaded); torch is a "
             "CUDA build (torch.version.cuda is {cuda}; a CPU wheel says None: install torch from the CUDA index "
             "as in the Dockerfile); CUDA_VISIBLE_DEVICES does not hide the card; in Docker, the service has the "
             "GPU reserved (`deploy.resources.reservations.devices`) and the NVIDIA container toolkit is installed.")
HINT_MEMORY = ("Out of GPU memory. Check `nvidia-smi` for other processes holding memory; try --low-vram (8 GB "
               "cards), a shorter --segment-duration or --batch-size 1.")
HINT_FLASH = ("FlashAttention failed. Its wheel must match this torch, CUDA and Python exactly, and it needs an "
              "Ampere or newer GPU; run without --flash-attn2 to confirm the rest works.")
HINT_CHECKPOINT = ("Loading the checkpoint failed. Check that the folder holds the complete download "
                   "(config.json, every *.safetensors shard listed in model.safetensors.index.json, tokenizer "
                   "files, preprocessor_config.json): `hf download Qwen/Qwen2.5-Omni-7B-AWQ --local-dir "
                   "Qwen/Qwen2.5-Omni-7B-AWQ` resumes a partial one.")
HINT_AWQ = ("The AWQ layers failed. They run on torch's int4 kernels: the fast path needs an Ampere or newer GPU "
            "(compute capability 8.0+; older cards dequantize per call, slower but correct). Check that torch is "
            "2.13 as pinned and that the checkpoint is the published AWQ one (quant_method awq, version gemm).")
HINT_TRANSCRIBING = ("Transcribing failed after the model loaded. Check that ffmpeg is installed (`ffmpeg -version`) "
                     "and that the clips in scripts/smoke/ are intact; the error above names the step.")
HINT_WORDS = ("The model loads and runs, but a transcript lacks expected words. Check that the checkpoint is the "
              "published Qwen2.5-Omni one (not a partial or random-weight copy); with AWQ, compare against the fp16 "
              "checkpoint (--checkpoint-path Qwen/Qwen2.5-Omni-7B); try without --flash-attn2 and --low-vram; keep "
              "the default --temperature 0 and --repetition-penalty.")


def hint_for(exc: BaseException, stage: str = "loading the checkpoint") -> str:
    """What to check, from the failure's type and message, else from the stage it happened in."""
    message = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in message:
        return HINT_MEMORY
    if "flash" in message:
        return HINT_FLASH
    if "awq" in message or "int4" in message or "_weight_int4pack" in message:
        return HINT_AWQ
    if "cuda" in message or "driver" in message or "nvidia" in message:
        return HINT_CUDA.format(cuda=torch.version.cuda)
    return HINT_TRANSCRIBING if stage.startswith("transcribing") else HINT_CHECKPOINT


def environment(settings: Settings) -> dict:
    device = pick_device(settings.device)
    report = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "device": str(device), "checkpoint": settings.checkpoint_path, "low_vram": settings.low_vram,
              "flash_attn2": settings.flash_attn2}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        report.update(gpu=properties.name, gpu_memory_gb=round(properties.total_memory / GIB, 1),
                      compute_capability=f"{properties.major}.{properties.minor}")
    return report


def fail(report: dict, stage: str, exc: BaseException, as_json: Path | None) -> int:
    report.update(status="failed", stage=stage, error=f"{type(exc).__name__}: {exc}", hint=hint_for(exc, stage))
    print(f"FAILED while {stage}: {report['error']}\n\nWhat to check: {report['hint']}", file=sys.stderr)
    write(report, as_json)
    return 2


def write(report: dict, path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    own.add_argument("--clips", type=Path, default=CLIPS, help="clips manifest (default: scripts/smoke/clips.json)")
    own.add_argument("--json", type=Path, help="also write the report here")
    own.add_argument("--temperature", default="0", help="sampling temperature per clip (default 0: greedy, the "
                                                         "same transcript on every run)")
    own.add_argument("-h", "--help", action="store_true")
    args, server_flags = own.parse_known_args(argv)
    if args.help:
        own.print_help()
        print("\nServer flags (any of them may follow):")
        build_parser().print_help()
        return 0
    settings = parse_args(server_flags)
    report: dict = {"status": "running"}
    if settings.device != "cpu" and not torch.cuda.is_available():  # a GPU test: "auto" must find one
        return fail(report, "finding the GPU", RuntimeError(f"CUDA is not available (--device {settings.device})"),
                    args.json)
    try:
        report["environment"] = environment(settings)
    except Exception as exc:
        return fail(report, "finding the GPU", exc, args.json)
    print("environment: " + json.dumps(report["environment"], ensure_ascii=False), flush=True)

    manifest = json.loads(args.clips.read_text())
    if not manifest.get("clips"):
        return fail(report, "reading the clips", ValueError(f"{args.clips} lists no clips"), args.json)
    device = pick_device(settings.device)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as scratch:
        transcriber = DirectTranscriber(settings, Path(scratch))
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            try:
                report["load_seconds"] = round(transcriber.load(), 2)
            except Exception as exc:
                return fail(report, "loading the checkpoint", exc.__cause__ or exc, args.json)
            print(f"loaded in {report['load_seconds']} s", flush=True)
            first = manifest["clips"][0]
            try:  # once untimed: the first call pays for kernel selection and allocator warm-up
                transcriber.transcribe(args.clips.parent / first["file"], first["language"],
                                       temperature=args.temperature)
            except Exception as exc:
                return fail(report, f"transcribing {first['file']}", exc.__cause__ or exc, args.json)
            report["clips"] = []
            for clip in manifest["clips"]:
                path = args.clips.parent / clip["file"]
                try:
                    result = transcriber.transcribe(path, clip["language"], temperature=args.temperature)
                except Exception as exc:
                    return fail(report, f"transcribing {clip['file']}", exc.__cause__ or exc, args.json)
                missing = contains_words(result.text, clip["expected"], clip["language"])
                rtf = round(result.seconds / result.audio_seconds, 3) if result.audio_seconds else None
                row = {"file": clip["file"], "language": clip["language"],
                       "audio_seconds": round(result.audio_seconds, 2), "seconds": round(result.seconds, 2),
                       "real_time_factor": rtf, "transcript": result.text, "expected": clip["expected"],
                       "missing": missing, "passed": not missing}
                report["clips"].append(row)
                print(f"{clip['file']}: RTF {row['real_time_factor']} ({row['seconds']} s for "
                      f"{row['audio_seconds']} s) {'PASS' if not missing else 'FAIL, missing ' + ', '.join(missing)}\n"
                      f"  {result.text}", flush=True)
            if cuda:
                report["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
                print(f"peak VRAM {report['peak_vram_gb']} GB (PyTorch's allocations)", flush=True)
        finally:
            transcriber.close()
    passed = all(row["passed"] for row in report["clips"])
    report["status"] = "passed" if passed else "failed"
    if not passed:
        report["hint"] = HINT_WORDS
        print(f"\nFAILED: a transcript lacks expected words.\n\nWhat to check: {HINT_WORDS}", file=sys.stderr)
    else:
        print("\nPASSED", flush=True)
    write(report, args.json)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
