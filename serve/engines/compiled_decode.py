"""Compiled decode: a static KV cache and a ``torch.compile``d decode step (CUDA graphs on a GPU).

At batch 1 each decoded token costs tens of milliseconds of Python and kernel launches while reading the
weights takes under one, so the GPU mostly waits (issue 15, benchmarks/README.md). transformers' own path
removes that overhead: ``generate`` with ``cache_implementation="static"`` and a ``CompileConfig`` runs the
prefill eagerly and the one-token decode step compiled (``mode="reduce-overhead"``: captured as CUDA
graphs). Sampling, the repetition penalty, per-sequence stopping and ``max_new_tokens`` stay transformers'
own, outside the graph, exactly as on the eager path.

A compiled graph has fixed shapes and, with CUDA graphs, fixed addresses, so both are kept few:
- the batch is padded up to a bucket (powers of two below the runner's batch size, and the batch size
  itself) by repeating its last row, whose output is dropped;
- the cache length is fixed at load: the prompt of a ``--segment-duration`` segment, room for a longer
  instruction, and a transcript budget (``tokens_per_second`` of audio), rounded up to ``CACHE_STEP``;
- the caches live as long as the model: one storage for the largest bucket, each smaller bucket's cache a
  view of its first rows (the same addresses at every call; batches run one at a time).
A row that spends its budget (or the cache) without reaching its end token, and may generate more, goes on
eagerly from where it stopped (a rare, degenerate transcript: real speech needs 4 to 8 tokens a second);
a segment whose prompt leaves no room (longer than the configured duration) is generated eagerly.

Compiled code is process-wide (dynamo's cache) and CUDA graphs belong to the thread that recorded them: the
runner thread warms up, decodes, and calls :meth:`CompiledDecoder.release` when the model is unloaded.
Inductor's artefacts are cached on disk (``cache_dir``), so a reload after an idle unload compiles from it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import CompileConfig, StaticCache
from transformers.cache_utils import StaticLayer

log = logging.getLogger(__name__)

CACHE_STEP = 512  # cache lengths are multiples of this
TOKENS_PER_SECOND = 16  # transcript budget of the compiled pass: 2-4x what speech needs
MIN_BUDGET = 64
PROMPT_ROOM = 64  # cache positions kept for instructions longer than the default one (languages, context words)
# Graphs dynamo may keep per compiled function (its default, 8, could leave some buckets eager).
RECOMPILE_LIMIT = 64


def batch_buckets(batch_size: int) -> list[int]:
    """The padded batch sizes used up to ``batch_size``: powers of two below it, and itself."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    buckets = [1 << i for i in range(batch_size.bit_length()) if 1 << i < batch_size]
    return [*buckets, batch_size]


def bucket_for(rows: int, batch_size: int) -> int | None:
    """The smallest bucket that holds ``rows``; None beyond ``batch_size``."""
    return next((b for b in batch_buckets(batch_size) if b >= rows), None)


def budget(audio_seconds: float, tokens_per_second: float = TOKENS_PER_SECOND, min_budget: int = MIN_BUDGET) -> int:
    return max(min_budget, math.ceil(tokens_per_second * audio_seconds))


def cache_length(prompt_tokens: int, audio_seconds: float, max_new_tokens: int, *,
                 tokens_per_second: float = TOKENS_PER_SECOND, min_budget: int = MIN_BUDGET) -> int:
    """The fixed cache length for segments of ``audio_seconds`` whose default prompt is ``prompt_tokens``."""
    new_tokens = min(max_new_tokens, budget(audio_seconds, tokens_per_second, min_budget))
    return CACHE_STEP * math.ceil((prompt_tokens + PROMPT_ROOM + new_tokens) / CACHE_STEP)


@dataclass(frozen=True)
class DecodePlan:
    """The shapes of one compiled ``generate`` call."""

    batch: int  # rows after padding
    new_tokens: int  # tokens the compiled pass may generate (the rest, if any, eagerly)


class CompiledDecoder:
    """The compiled decode of one loaded model: plans, settings, the persistent caches, and their release."""

    def __init__(self, model: Any, *, batch_size: int, cache_len: int, tokens_per_second: float = TOKENS_PER_SECOND,
                 min_budget: int = MIN_BUDGET, cache_dir: Path | None = None) -> None:
        self.model = model
        self.device = model.device
        self.batch_size = batch_size
        self.cache_len = cache_len
        self.tokens_per_second = tokens_per_second
        self.min_budget = min_budget
        self._caches: dict[int, StaticCache] = {}
        self._storage: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if cache_dir is not None:
            use_disk_cache(cache_dir)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        # dynamic=None is dynamo's automatic dynamic shapes: the second batch size compiles one graph with a
        # symbolic batch, which every later bucket reuses (CUDA graphs are still recorded per bucket, which is
        # cheap), instead of one full compile per bucket.
        self.compile_config = CompileConfig(fullgraph=False, dynamic=None,
                                            mode="reduce-overhead" if self.device.type == "cuda" else "default")
        # transformers compiles on accelerators only unless asked: the CPU is asked too, so that this path
        # runs (and is tested) on machines without a GPU when the flag is given.
        self.compile_config._compile_all_devices = True

    def plan(self, rows: int, prompt_tokens: int, audio_seconds: float, max_new_tokens: int) -> DecodePlan | None:
        """The compiled call for ``rows`` segments, or None where they do not fit it (eager then)."""
        bucket = bucket_for(rows, self.batch_size)
        room = self.cache_len - prompt_tokens
        if bucket is None or room < min(self.min_budget, max_new_tokens):
            return None
        new_tokens = min(max_new_tokens, budget(audio_seconds, self.tokens_per_second, self.min_budget), room)
        return DecodePlan(batch=bucket, new_tokens=new_tokens)

    def settings(self) -> dict[str, Any]:
        """What a ``GenerationConfig`` needs on top of the eager one to generate compiled."""
        return {"compile_config": self.compile_config, "cache_implementation": None}

    def cache_for(self, plan: DecodePlan) -> StaticCache:
        """The bucket's static cache, emptied: a view of the first rows of one storage, at fixed addresses."""
        cache = self._caches.get(plan.batch)
        if cache is None:
            cache = self._caches[plan.batch] = self._view(plan.batch)
        cache.reset()
        return cache

    def _view(self, rows: int) -> StaticCache:
        text = self.model.config.get_text_config(decoder=True)
        heads = text.num_key_value_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        if self._storage is None:
            shape = (self.batch_size, heads, self.cache_len, head_dim)
            self._storage = [(torch.zeros(shape, dtype=self.model.dtype, device=self.device),
                              torch.zeros(shape, dtype=self.model.dtype, device=self.device))
                             for _ in range(text.num_hidden_layers)]
        cache = StaticCache(config=text, max_cache_len=self.cache_len)
        if any(type(layer) is not StaticLayer for layer in cache.layers):
            raise ValueError("compiled decode supports full-attention static layers only")
        for layer, (keys, values) in zip(cache.layers, self._storage, strict=True):
            # What StaticLayer.lazy_initialization sets, with the shared storage's rows instead of new tensors.
            layer.dtype, layer.device = keys.dtype, keys.device
            layer.batch_size, layer.num_heads = rows, heads
            layer.k_head_dim = layer.v_head_dim = head_dim
            layer.keys, layer.values = keys[:rows], values[:rows]
            layer.cumulative_length = layer.cumulative_length.to(self.device)
            for tensor in (layer.keys, layer.values, layer.cumulative_length):
                torch._dynamo.mark_static_address(tensor)
            layer.is_initialized = True
        return cache

    def release(self) -> None:
        """Forget the caches, the compiled decode step and this thread's CUDA graphs."""
        self._caches.clear()
        self._storage = None
        if hasattr(self.model, "_compiled_call"):
            del self.model._compiled_call
        self.model = None
        torch._dynamo.reset()


def use_disk_cache(folder: Path) -> None:
    """Keep inductor's (and Triton's) compiled artefacts in ``folder``, unless the environment names its own."""
    folder.mkdir(parents=True, exist_ok=True)
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        log.info("compile cache: %s (from TORCHINDUCTOR_CACHE_DIR)", os.environ["TORCHINDUCTOR_CACHE_DIR"])
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    log.info("compile cache: %s", folder)
