"""Low-VRAM mode (--low-vram): what it keeps off the GPU, and that transcripts do not change.

On CPU the mode has nothing to move (the model is in CPU memory already); the tests here check the device map
it asks the loader for, that it loads and transcribes the same, and that the settings reach the engine. The
CUDA tests (skipped without a GPU) check what stays resident and the memory it saves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from serve.config import parse_args
from serve.engines import low_vram
from serve.engines.qwen2_5_omni import GenerationOptions, QwenOmniEngine

OPTIONS = GenerationOptions(12, 0.0, 1.0)


def speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


def test_the_device_map_keeps_the_audio_encoder_and_embeddings_in_cpu_memory() -> None:
    gpu = torch.device("cuda", 1)
    assert low_vram.device_map(gpu) == {
        "model.audio_tower": "cpu", "model.language_model.embed_tokens": "cpu", "model.language_model.layers": gpu,
        "model.language_model.norm": gpu, "model.language_model.rotary_emb": gpu, "lm_head": gpu}
    assert low_vram.device_map(torch.device("cpu")) == {"": torch.device("cpu")}


def test_the_dispatch_the_loader_does_on_a_gpu_leaves_the_right_parts_in_cpu_memory(
        tiny_awq_checkpoint: Path) -> None:
    """accelerate's dispatch as the loader runs it for a CUDA device, with the meta device standing in for the
    GPU (no memory, so nothing can compute there: this checks placement and hooks, not arithmetic)."""
    from accelerate import dispatch_model

    engine = QwenOmniEngine.load(tiny_awq_checkpoint, device="cpu")
    model = engine.model
    names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    covered = low_vram.device_map(torch.device("meta"))
    assert all(any(name.startswith(prefix + ".") for prefix in covered) for name in names)  # no "" catch-all
    embedding_rows = model.model.language_model.embed_tokens.weight.detach().clone()
    dispatch_model(model, device_map=covered, skip_keys=model._skip_keys_device_placement)
    low_vram.finish(model, torch.device("meta"))

    embeddings = model.model.language_model.embed_tokens
    assert embeddings.weight.device.type == "cpu" and torch.equal(embeddings.weight, embedding_rows)
    assert embeddings._hf_hook.execution_device == torch.device("cpu") and embeddings._hf_hook.io_same_device
    encoder = model.model.audio_tower
    assert all(p.device.type == "meta" for p in encoder.parameters())  # at rest: streamed in for each prefill
    assert any(getattr(m, "_hf_hook", None) is not None for m in encoder.modules())
    assert model.lm_head.weight.device.type == "meta" and model.device.type == "meta"  # generation's device
    engine.close()


def test_the_flag_and_its_variable_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args([]).low_vram is False
    assert parse_args(["--low-vram"]).low_vram is True
    monkeypatch.setenv("QWEN_OMNI_LOW_VRAM", "true")
    assert parse_args([]).low_vram is True
    assert parse_args(["--no-low-vram"]).low_vram is False


def test_on_cpu_it_loads_warns_and_transcribes_the_same(tiny_awq_checkpoint: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    clips = [speechlike(3.0, 1), speechlike(5.0, 2)]
    normal = QwenOmniEngine.load(tiny_awq_checkpoint, device="cpu")
    expected = normal.transcribe_batch(clips, OPTIONS)
    normal.close()
    with caplog.at_level(logging.WARNING, logger="serve.engines.qwen2_5_omni"):
        engine = QwenOmniEngine.load(tiny_awq_checkpoint, device="cpu", low_vram=True)
    assert "--low-vram has no effect on the CPU" in caplog.text
    assert engine.low_vram and engine.device == torch.device("cpu")
    assert engine.transcribe_batch(clips, OPTIONS) == expected
    engine.close()


def test_the_model_reports_the_device_generation_runs_on(tiny_awq_checkpoint: Path) -> None:
    engine = QwenOmniEngine.load(tiny_awq_checkpoint, device="cpu")
    # Not its first parameter's device (the audio encoder's, which low-VRAM mode moves away): the output head's.
    engine.model.model.audio_tower.to("meta")
    assert engine.model.device == torch.device("cpu")
    engine.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("checkpoint", ["tiny_checkpoint", "tiny_awq_checkpoint"])
def test_cuda_low_vram_keeps_only_the_decoder_resident_and_transcribes_the_same(
        checkpoint: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(checkpoint)
    cuda = torch.device("cuda", torch.cuda.current_device())
    clips = [speechlike(3.0, 1), speechlike(5.0, 2)]
    normal = QwenOmniEngine.load(path, device="cuda")
    expected = normal.transcribe_batch(clips, OPTIONS)
    normal_resident = low_vram.resident_bytes(normal.model, cuda)
    normal.close()

    engine = QwenOmniEngine.load(path, device="cuda", low_vram=True)
    model = engine.model
    assert engine.device.type == "cuda"
    assert all(p.device.type != "cuda" for p in model.model.audio_tower.parameters())
    assert model.model.language_model.embed_tokens.weight.device.type == "cpu"
    assert model.lm_head.weight.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in model.model.language_model.layers.parameters())
    assert engine.transcribe_batch(clips, OPTIONS) == expected
    assert engine.transcribe_batch(clips, OPTIONS) == expected  # the encoder went back and came again
    assert all(p.device.type != "cuda" for p in model.model.audio_tower.parameters())  # and left again
    saved = normal_resident - low_vram.resident_bytes(model, cuda)
    embeddings = model.model.language_model.embed_tokens.weight
    encoder = sum(p.numel() * p.element_size() for p in model.model.audio_tower.parameters())
    assert saved >= encoder + embeddings.numel() * embeddings.element_size()
    engine.close()
