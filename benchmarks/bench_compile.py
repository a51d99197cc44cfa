#!/usr/bin/env python3
"""Per-token decode time of a tiny thinker with the real layer count: today's eager path against a static KV
cache, and against a static cache with the decode step compiled (torch.compile), on any machine.

A tiny checkpoint with the 7B thinker's 28 decoder layers (tiny widths) is built and loaded by the server's
own code (``QwenOmniEngine.load``), bf16 (fp32 on CPU) and AWQ. The weights are tiny, so what is left per
token is what the GPU pays per token at batch 1 too: Python, the framework and kernel launches. Each mode
generates from the same 5 s tone, greedy; the per-token time is the difference between a long and a short
generation divided by the extra tokens (prefill cancels out), the median of ``--repeats``. The first call
of each mode (for the compiled one: the server's warm-up at load, then the call) is reported apart. Every
mode's tokens must equal the eager path's, token for token.

    python benchmarks/bench_compile.py                  # 28 layers, bf16 and AWQ
    python benchmarks/bench_compile.py --layers 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import build_tiny_checkpoints  # noqa: E402

from benchmarks.report import report  # noqa: E402
from serve.engines.qwen2_5_omni import GenerationOptions, QwenOmniEngine  # noqa: E402

SAMPLE_RATE = 16000


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def generate(engine: QwenOmniEngine, audio: np.ndarray, tokens: int, mode: str) -> tuple[torch.Tensor, float]:
    """Generated tokens and seconds. "compiled" is the server's path (``--compiled-decode``: compiled at the
    first call, as at load), "static" transformers' static cache alone, "eager" the server's default."""
    options = GenerationOptions(max_new_tokens=tokens, temperature=0.0)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        inputs = engine._inputs([audio], options.instruction)
        prompt_tokens = inputs["input_ids"].shape[1]
        config = engine._generation_config(options, prompt_tokens)
        config.min_new_tokens = tokens  # every run generates exactly ``tokens`` (random weights may stop early)
        if mode == "compiled":
            if engine.compiled is None:
                engine.compile_decode(1, len(audio) / SAMPLE_RATE, 8192)
            plan = engine.compiled.plan(1, prompt_tokens, len(audio) / SAMPLE_RATE, 8192)
            output = engine._generate_compiled(inputs, config, plan)[0]
        else:
            if mode == "static":
                config.cache_implementation = "static"
            output = engine.model.generate(**inputs, generation_config=config)[:, prompt_tokens:]
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return output, time.perf_counter() - started


def measure(engine: QwenOmniEngine, label: str, args: argparse.Namespace) -> list[dict]:
    audio = tone(5.0)
    reference, _ = generate(engine, audio, args.long, "eager")
    rows = []
    for mode in args.modes:
        output, first = generate(engine, audio, args.long, mode)  # compiles, for the compiled mode
        per_token = []
        for _ in range(args.repeats):
            _, short = generate(engine, audio, args.short, mode)
            _, long = generate(engine, audio, args.long, mode)
            per_token.append((long - short) / (args.long - args.short))
        rows.append({"weights": label, "mode": mode, "layers": args.layers, "device": str(engine.device),
                     "first_call_s": round(first, 2), "per_token_ms": round(1000 * statistics.median(per_token), 2),
                     "tokens_equal_eager": bool(torch.equal(output, reference))})
        print(json.dumps(rows[-1]), flush=True)
    eager = next(r["per_token_ms"] for r in rows if r["mode"] == "eager")
    for row in rows:
        row["speed_vs_eager"] = round(eager / row["per_token_ms"], 2) if row["per_token_ms"] > 0 else None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=28, help="thinker decoder layers (the 7B has 28)")
    parser.add_argument("--weights", nargs="+", choices=["bf16", "awq"], default=["bf16", "awq"])
    parser.add_argument("--modes", nargs="+", choices=["eager", "static", "compiled"],
                        default=["eager", "static", "compiled"])
    parser.add_argument("--short", type=int, default=16, help="tokens of the short generation")
    parser.add_argument("--long", type=int, default=80, help="tokens of the long generation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if "eager" not in args.modes:
        args.modes = ["eager", *args.modes]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        fp, awq = build_tiny_checkpoints.build(Path(tmp), layers=args.layers)
        for label in args.weights:
            engine = QwenOmniEngine.load(fp if label == "bf16" else awq, device=args.device)
            try:
                rows += measure(engine, label, args)
            finally:
                engine.close()
    print()
    report(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
