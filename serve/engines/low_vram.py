"""Low-VRAM mode (``--low-vram``): keep on the GPU only what every generated token needs.

Two parts of the thinker are large but used rarely or lightly, and leave the GPU:

* the **audio encoder** (about 640 M parameters, 1.3 GB in fp16) runs once per batch, in the prefill. Its
  weights stay in CPU memory and are copied to the GPU layer by layer while it runs, then dropped (accelerate's
  CPU offload, set up by the loader from the device map below), so the prefill's peak does not rise;
* the **token embeddings** (152 k x 3584, 1.1 GB) are a table lookup: they stay in CPU memory and the lookup
  runs there; only the looked-up rows (a few KB per token) go to the GPU.

The decoder layers and the output head stay resident: streaming them per token would cost a full weight
transfer for every generated token. Generation is serialized by the engine's lock, so a module whose weights
are moving is never used by two requests at once.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate.hooks import AlignDevicesHook, SequentialHook, add_hook_to_module, remove_hook_from_module

log = logging.getLogger(__name__)

AUDIO_ENCODER = "model.audio_tower"
TOKEN_EMBEDDINGS = "model.language_model.embed_tokens"
# Everything else, by name. A catch-all "" entry would give the root module a hook that places every
# submodule, the offloaded ones included, on the GPU while loading: the peak this mode exists to avoid.
RESIDENT = ("model.language_model.layers", "model.language_model.norm", "model.language_model.rotary_emb", "lm_head")
CPU = torch.device("cpu")


def device_map(device: torch.device) -> dict[str, str | torch.device]:
    """The loader's device map: the two parts kept in CPU memory, the rest on ``device``."""
    if device.type == "cpu":
        return {"": device}  # nothing to save: the model is in CPU memory already
    return {AUDIO_ENCODER: "cpu", TOKEN_EMBEDDINGS: "cpu", **dict.fromkeys(RESIDENT, device)}


def _offload_hook(module: torch.nn.Module) -> AlignDevicesHook | None:
    """The accelerate hook that streams ``module``'s weights from CPU memory, if any."""
    hook = getattr(module, "_hf_hook", None)
    hooks = hook.hooks if isinstance(hook, SequentialHook) else [hook]
    return next((h for h in hooks if isinstance(h, AlignDevicesHook) and h.offload and h.weights_map is not None),
                None)


def _module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    return model.get_submodule(path)


def finish(model: Any, device: torch.device) -> None:
    """After loading with :func:`device_map`: look up token embeddings on the CPU instead of streaming them.

    The loader gives every module mapped to the CPU accelerate's offload hook (weights copied to the GPU at
    each call). That is right for the audio encoder, called once per batch, but would copy 1.1 GB of
    embeddings for every generated token; the lookup runs on the CPU instead, and its output is moved to the
    GPU, where the next layer expects it.
    """
    if device.type == "cpu":
        return
    embeddings = _module(model, TOKEN_EMBEDDINGS)
    if embeddings.weight is model.lm_head.weight:  # the published checkpoints keep them separate
        raise ValueError("tied input and output embeddings cannot be split between CPU and GPU")
    hook = _offload_hook(embeddings)
    weight = hook.weights_map["weight"] if hook is not None else embeddings.weight
    if weight.device.type == "meta":
        raise ValueError("the token embeddings were not loaded into CPU memory")
    remove_hook_from_module(embeddings)
    embeddings.weight = torch.nn.Parameter(weight.to(CPU), requires_grad=False)
    add_hook_to_module(embeddings, AlignDevicesHook(execution_device=CPU, io_same_device=True))


def resident_bytes(model: torch.nn.Module, device: torch.device) -> int:
    """Bytes of weights and buffers held on ``device`` (what the GPU keeps between requests)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if t.device == device)
