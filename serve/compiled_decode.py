"""Compiled decode: a static KV cache and a ``torch.compile``d decode step (CUDA graphs on a GPU).

At batch 1 each decoded token costs tens of milliseconds of Python and kernel launches while reading the
weights takes under one, so the GPU mostly waits (issue 15, benchmarks/README.md). transformers' own path
removes that overhead: ``generate`` with ``cache_implementation="static"`` and a ``CompileConfig`` runs the
prefill eagerly and the one-token decode step compiled (``mode="reduce-overhead"``: captured as CUDA
graphs). Sampling, the repetition penalty, per-sequence stopping and ``max_new_tokens`` stay transformers'
own, outside the graph, exactly as on the eager path.

A compiled graph has fixed shapes, so the shapes are kept few:
- the batch is padded up to a bucket (powers of two below the runner's batch size, and the batch size
  itself) by repeating its last row, whose output is dropped;
- the cache holds the prompt plus a transcript budget (``tokens_per_second`` of audio), rounded up to a
  multiple of ``CACHE_STEP``; transformers keeps every later cache at least as long as the longest so far,
  so after the warm-up at load the length only grows for segments longer than the configured one.
A row that spends the budget without reaching its end token, and may generate more, goes on eagerly from
where it stopped (a rare, degenerate transcript: real speech needs 4 to 8 tokens a second).

Compiled code is process-wide (dynamo's cache): :meth:`CompiledDecoder.release` drops it, and the graphs'
memory with it, when the model is unloaded. Inductor's artefacts are cached on disk (``cache_dir``), so a
reload after an idle unload compiles from cache.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import CompileConfig

log = logging.getLogger(__name__)

CACHE_STEP = 512  # cache lengths are multiples of this: fewer graphs, at most this many idle slots per row
TOKENS_PER_SECOND = 16  # transcript budget of the compiled pass: 2-4x what speech needs
MIN_BUDGET = 64
# Graphs dynamo may keep per compiled function (its default, 8, would leave larger batch buckets eager).
RECOMPILE_LIMIT = 64


def batch_buckets(batch_size: int) -> list[int]:
    """The padded batch sizes used up to ``batch_size``: powers of two below it, and itself."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    buckets = [1 << i for i in range(batch_size.bit_length()) if 1 << i < batch_size]
    return [*buckets, batch_size]


def bucket_for(rows: int, batch_size: int) -> int:
    """The smallest bucket that holds ``rows`` (``rows`` itself beyond ``batch_size``)."""
    return next((b for b in batch_buckets(batch_size) if b >= rows), rows)


@dataclass(frozen=True)
class DecodePlan:
    """The shapes of one compiled ``generate`` call."""

    batch: int  # rows after padding
    cache_len: int  # static KV cache positions per row
    new_tokens: int  # tokens the compiled pass may generate (the rest, if any, eagerly)


def plan(rows: int, prompt_tokens: int, audio_seconds: float, max_new_tokens: int, *, batch_size: int = 1,
         tokens_per_second: float = TOKENS_PER_SECOND, min_budget: int = MIN_BUDGET) -> DecodePlan:
    """The shapes for ``rows`` segments of at most ``audio_seconds`` whose prompts are ``prompt_tokens`` long."""
    budget = max(min_budget, math.ceil(tokens_per_second * audio_seconds))
    new_tokens = min(max_new_tokens, budget)
    cache_len = CACHE_STEP * math.ceil((prompt_tokens + new_tokens) / CACHE_STEP)
    return DecodePlan(batch=bucket_for(rows, batch_size), cache_len=cache_len, new_tokens=new_tokens)


class CompiledDecoder:
    """Plans and configures compiled ``generate`` calls for one loaded model, and releases their graphs."""

    def __init__(self, device: torch.device, *, batch_size: int = 1, tokens_per_second: float = TOKENS_PER_SECOND,
                 min_budget: int = MIN_BUDGET, cache_dir: Path | None = None) -> None:
        self.device = device
        self.batch_size = batch_size
        self.tokens_per_second = tokens_per_second
        self.min_budget = min_budget
        if cache_dir is not None:
            use_disk_cache(cache_dir)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self.compile_config = CompileConfig(fullgraph=False, dynamic=False,
                                            mode="reduce-overhead" if device.type == "cuda" else "default")
        # transformers compiles on accelerators only unless asked: the CPU is asked too, so that this path
        # runs (and is tested) on machines without a GPU when the flag is given.
        self.compile_config._compile_all_devices = True

    def plan(self, rows: int, prompt_tokens: int, audio_seconds: float, max_new_tokens: int) -> DecodePlan:
        return plan(rows, prompt_tokens, audio_seconds, max_new_tokens, batch_size=self.batch_size,
                    tokens_per_second=self.tokens_per_second, min_budget=self.min_budget)

    def settings(self, plan: DecodePlan) -> dict[str, Any]:
        """What a ``GenerationConfig`` needs on top of the eager one to run ``plan`` compiled."""
        return {"cache_implementation": "static", "max_cache_len": plan.cache_len,
                "compile_config": self.compile_config}

    @staticmethod
    def release(model: Any) -> None:
        """Forget the compiled decode step and its CUDA graphs (process-wide: one model per process)."""
        if model is not None and hasattr(model, "_compiled_call"):
            del model._compiled_call
        torch._dynamo.reset()


def use_disk_cache(folder: Path) -> None:
    """Keep inductor's (and Triton's) compiled artefacts in ``folder``, unless the environment names its own."""
    folder.mkdir(parents=True, exist_ok=True)
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        log.info("compile cache: %s (from TORCHINDUCTOR_CACHE_DIR)", os.environ["TORCHINDUCTOR_CACHE_DIR"])
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    log.info("compile cache: %s", folder)
