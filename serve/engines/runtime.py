"""What both engines (and the forced aligner) need of torch: the device and dtype, the attention kernel,
the batch size that fits, ``generate``'s settings for a request, and the out-of-memory signal."""

from __future__ import annotations

import gc
import importlib.util
import logging
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig

from ..audio import SAMPLE_RATE
from ..errors import InvalidParameter
from ..generation import EngineOutOfMemory, GenerationOptions
from . import Capabilities, EngineLoadError

log = logging.getLogger(__name__)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineLoadError(f"device {setting!r} requested but CUDA is not available")
    return device


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it (and the int4 kernels need it), fp16 on older GPUs, fp32 on CPU."""
    if device.type == "cuda":
        # Native bf16 only (Ampere and newer): emulated bf16 on older cards is slower than fp16.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.float32


def pick_attention(flash_attn2: bool, device: torch.device, dtype: torch.dtype) -> str:
    if not flash_attn2:
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        log.warning("--flash-attn2 requested but flash-attn is not installed: using SDPA attention")
        return "sdpa"
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        log.warning("--flash-attn2 needs a CUDA device and fp16/bf16: using SDPA attention")
        return "sdpa"
    return "flash_attention_2"


def batch_size_for(model: Any, device: torch.device, tokens_per_segment: float, limit: int,
                   reserve_bytes: int = 0) -> int:
    """How many segments of ``tokens_per_segment`` KV-cache positions each fit in the free memory of ``device``
    (1 on CPU, where batching buys little): their cache with 50% headroom plus a fixed 256 MiB each for the
    audio encoder's activations, in 80% of what is free once ``reserve_bytes`` (a model that loads later,
    the aligner) are set aside."""
    if device.type != "cuda":
        return 1
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_bytes_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * model.dtype.itemsize
    per_segment = 1.5 * kv_bytes_per_token * tokens_per_segment + 256 * 1024**2
    free, _total = torch.cuda.mem_get_info(device)
    return max(1, min(limit, int(0.8 * max(0, free - reserve_bytes) // per_segment)))


def generation_config(options: GenerationOptions, stop_ids: list[int], pad_id: int, *,
                      max_new_tokens: int) -> GenerationConfig:
    """``generate``'s settings for a request's options: each row stops at its own end token; sampling at the
    request's temperature over the whole vocabulary, or greedy at 0."""
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "repetition_penalty": options.repetition_penalty,
                                "eos_token_id": stop_ids, "pad_token_id": pad_id}
    if options.temperature > 0:
        settings.update(do_sample=True, temperature=options.temperature, top_k=0, top_p=1.0)
    else:
        settings.update(do_sample=False)
    return GenerationConfig(**settings)


def out_of_memory_after_release(message: str) -> EngineOutOfMemory:
    """The engine's out-of-memory signal, once the failed attempt's memory is back.

    Call it out of the ``except`` block, with the caller's inputs dropped: the error and its traceback are
    gone, and with them the attempt's KV cache and activations, so only now can the cache be emptied, and
    the exception carries no reference to them (no __cause__, no __context__) while the batch is retried
    smaller."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return EngineOutOfMemory(message)


def weights_bytes(model: Any) -> int:
    """What a model's weights and buffers take, wherever they are (0 once it is dropped)."""
    if model is None:
        return 0
    return sum(t.numel() * t.element_size() for tensors in (model.parameters(), model.buffers()) for t in tensors)


def refuse_what_it_cannot_do(capabilities: Capabilities, clips: list[np.ndarray], options: GenerationOptions) -> None:
    """A client error (400) for what the server could not check before the model loaded: a language, a
    translation or a segment length this engine does not take."""
    longest = max((len(clip) for clip in clips), default=0) / SAMPLE_RATE
    problem = capabilities.request_problem(options, longest)
    if problem is not None:
        raise InvalidParameter(problem[1], param=problem[0])
