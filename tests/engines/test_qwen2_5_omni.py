"""The thinker engine on tiny checkpoints: thinker-only loading, the ASR prompt, generation settings."""

from __future__ import annotations

import json
import shutil
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from serve.engines import EngineLoadError
from serve.engines.qwen2_5_omni import QwenOmniEngine, audio_token_count
from serve.engines.runtime import pick_attention
from serve.generation import (
    DEFAULT_INSTRUCTION,
    SYSTEM_PROMPT,
    TRANSLATION_SYSTEM_PROMPT,
    GenerationOptions,
    system_prompt_for,
)
from tests.conftest import sine


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    engine = QwenOmniEngine.load(tiny_checkpoint, device="cpu")
    yield engine
    engine.close()


def test_only_the_thinker_is_loaded_without_its_vision_tower(engine: QwenOmniEngine, tiny_checkpoint: Path) -> None:
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    assert isinstance(engine.model, Qwen2_5OmniThinkerForConditionalGeneration)
    names = [n for n, _ in engine.model.named_parameters()]
    assert not any(n.startswith(("talker", "token2wav")) or ".visual." in n for n in names)
    assert any(".audio_tower." in n for n in names) and any(".language_model." in n for n in names)
    full = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    vision = sum(p.numel() for p in full.model.visual.parameters())
    assert sum(p.numel() for p in engine.model.parameters()) == sum(p.numel() for p in full.parameters()) - vision
    # Everything else is the same weights as the full thinker loads.
    ours = dict(engine.model.named_parameters())
    for name, value in full.named_parameters():
        if ".visual." not in name:
            assert torch.equal(ours[name], value), name
    assert engine.model.dtype == torch.float32 and engine.device.type == "cpu"
    assert not engine.quantized


def test_full_omni_checkpoint_loads_completely(tiny_checkpoint: Path) -> None:
    """The tiny checkpoint has the published layout: the full Omni class finds every weight it needs in it."""
    import build_tiny_checkpoints as builder
    from safetensors.torch import load_file
    from transformers import Qwen2_5OmniForConditionalGeneration

    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    assert {"Chelsie", "Ethan"} <= set(model.speaker_map)
    loaded = {builder.published_key(k): v for k, v in model.state_dict().items() if v.numel()}
    stored = {}
    for shard in tiny_checkpoint.glob("model-*.safetensors"):
        stored.update(load_file(str(shard)))
    assert set(loaded) == set(stored)
    for key in ("thinker.model.layers.0.self_attn.q_proj.bias", "thinker.audio_tower.layers.0.fc1.weight",
                "talker.model.norm.weight", "token2wav.code2wav_bigvgan_model.conv_post.weight"):
        assert torch.equal(loaded[key], stored[key])


def test_prompt_follows_the_asr_recipe(engine: QwenOmniEngine) -> None:
    prompt = engine._prompt
    assert prompt.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert f"{DEFAULT_INSTRUCTION}<|audio_bos|><|AUDIO|><|audio_eos|><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_translation_follows_the_authors_recipe_and_reaches_the_model(engine: QwenOmniEngine) -> None:
    from serve.transcriber import TranscriptionParams

    params = TranscriptionParams(segment_duration=30, max_new_tokens=6, temperature=0.0, repetition_penalty=1.0,
                                 language="de", task="translate", target_language="en")
    options = params.generation
    assert options.instruction == "Listen to the provided German speech and produce a translation in English text."
    ids = engine._inputs([sine(1.0)], options.instruction, system_prompt_for(options))["input_ids"][0]
    rendered = engine.tokenizer.decode(ids)
    assert rendered.startswith(f"<|im_start|>system\n{TRANSLATION_SYSTEM_PROMPT}<|im_end|>")
    assert f"{options.instruction}<|audio_bos|>" in rendered
    transcribed = engine.generate_batch([sine(1.0)], replace(options, target_language=None,
                                                             instruction=DEFAULT_INSTRUCTION))[0]
    assert engine.generate_batch([sine(1.0)], options)[0].tokens != transcribed.tokens


@pytest.mark.parametrize("seconds", [0.05, 0.5, 1.0, 7.3, 30.0])
def test_audio_placeholders_match_the_encoder_output(engine: QwenOmniEngine, seconds: float) -> None:
    inputs = engine._inputs([sine(seconds)])
    frames = int(inputs["feature_attention_mask"].sum())
    # No padding to 300 s: features are as long as the audio.
    assert inputs["input_features"].shape[-1] == frames == round(seconds * 100)
    audio_id = engine.model.config.audio_token_id
    assert int((inputs["input_ids"] == audio_id).sum()) == audio_token_count(frames)
    with torch.inference_mode():
        features = engine.model.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
    assert features.last_hidden_state.shape[0] == audio_token_count(frames)


def test_audio_token_count_matches_transformers() -> None:
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

    for frames in range(3, 3000, 37):
        assert audio_token_count(frames) == int(_get_feat_extract_output_lengths(torch.tensor(frames)))


@pytest.mark.parametrize("samples", [48000, 48001, 48159, 16000 * 11 + 7])
def test_features_equal_the_processors_padded_features(engine: QwenOmniEngine, tiny_checkpoint: Path,
                                                       samples: int) -> None:
    """Same frames as the authors' processor (300 s of zero padding, masked), without computing the padding."""
    rng = np.random.default_rng(samples)
    audio = (sine(samples / 16000, 523.0) + 0.05 * rng.standard_normal(samples)).astype(np.float32)[:samples]
    extractor = WhisperFeatureExtractor.from_pretrained(tiny_checkpoint)
    padded = extractor([audio], sampling_rate=16000, return_attention_mask=True, padding="max_length",
                       return_tensors="pt")
    frames = int(padded["attention_mask"].sum())
    inputs = engine._inputs([audio])
    assert inputs["input_features"].shape[-1] == frames
    assert torch.allclose(inputs["input_features"][0], padded["input_features"][0, :, :frames], atol=1e-4)


def test_greedy_decoding_is_deterministic(engine: QwenOmniEngine) -> None:
    options = GenerationOptions(max_new_tokens=6, temperature=0.0, repetition_penalty=1.0)
    audio = sine(2.0)
    assert engine.transcribe(audio, options) == engine.transcribe(audio, options)


def test_max_new_tokens_reaches_the_thinker_beyond_1024(engine: QwenOmniEngine) -> None:
    """The full Omni model's generate caps the thinker at 1024 tokens; the engine must not."""
    inputs = engine._inputs([sine(0.5)])
    config = engine._generation_config(GenerationOptions(max_new_tokens=1100, temperature=0.0), 10)
    assert config.max_new_tokens == 1100
    with torch.inference_mode():
        out = engine.model.generate(**inputs, generation_config=config)
    # Random weights never emit an end token, so the budget is spent exactly.
    assert out.shape[1] - inputs["input_ids"].shape[1] == 1100


def test_generation_stops_on_the_end_tokens(engine: QwenOmniEngine) -> None:
    tok = engine.tokenizer
    config = engine._generation_config(GenerationOptions(), 100)
    assert set(config.eos_token_id) == {tok.convert_tokens_to_ids("<|im_end|>"),
                                        tok.convert_tokens_to_ids("<|endoftext|>")}
    assert config.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    greedy = engine._generation_config(GenerationOptions(temperature=0.0), 100)
    assert greedy.do_sample is False
    sampled = engine._generation_config(GenerationOptions(temperature=0.7, repetition_penalty=1.3), 100)
    assert sampled.do_sample is True and sampled.temperature == 0.7 and sampled.repetition_penalty == 1.3
    # The budget never runs past the context window.
    assert engine._generation_config(GenerationOptions(max_new_tokens=32768), 30000).max_new_tokens == 2768


def test_sampling_with_temperature_varies(engine: QwenOmniEngine) -> None:
    options = GenerationOptions(max_new_tokens=12, temperature=1.5, repetition_penalty=1.0)
    outputs = {engine.transcribe(sine(1.0), options) for _ in range(4)}
    assert len(outputs) > 1


def test_flash_attention_falls_back_to_sdpa(caplog: pytest.LogCaptureFixture) -> None:
    assert pick_attention(False, torch.device("cpu"), torch.float32) == "sdpa"
    assert pick_attention(True, torch.device("cpu"), torch.float32) == "sdpa"
    assert "SDPA" in caplog.text


def test_close_drops_the_model(tiny_checkpoint: Path) -> None:
    import weakref

    engine = QwenOmniEngine.load(tiny_checkpoint, device="cpu")
    ref = weakref.ref(engine.model)
    engine.close()
    assert engine.model is None and ref() is None


@pytest.mark.parametrize("breakage", ["not json", "wrong model type", "missing weights", "no template"])
def test_broken_checkpoints_fail_with_a_reason(tiny_checkpoint: Path, tmp_path: Path, breakage: str) -> None:
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    config_path = broken / "config.json"
    if breakage == "not json":
        config_path.write_text("{not json")
    elif breakage == "wrong model type":
        config_path.write_text(json.dumps({"model_type": "llama"}))
    elif breakage == "missing weights":
        for shard in broken.glob("model-*.safetensors"):
            shard.unlink()
    else:
        (broken / "chat_template.json").unlink()
        cfg = json.loads((broken / "tokenizer_config.json").read_text())
        cfg.pop("chat_template")
        (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineLoadError) as exc:
        QwenOmniEngine.load(broken, device="cpu")
    assert str(exc.value)


def test_silence_is_transcribed_without_errors(engine: QwenOmniEngine) -> None:
    text = engine.transcribe(np.zeros(16000, dtype=np.float32), GenerationOptions(max_new_tokens=4))
    assert isinstance(text, str)


def test_out_of_memory_frees_the_failed_attempt_before_the_retry(engine: QwenOmniEngine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from serve.generation import EngineOutOfMemory

    attempt: list[weakref.ref] = []
    freed_when_emptied: list[bool] = []

    def generate(**_: object) -> torch.Tensor:
        kv_cache = torch.zeros(4096)  # what the failed attempt holds in its frames
        attempt.append(weakref.ref(kv_cache))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr(engine.model, "generate", generate)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed_when_emptied.append(attempt[0]() is None))
    with pytest.raises(EngineOutOfMemory, match=r"Tried to allocate 2\.00 GiB") as caught:
        engine.transcribe_batch([sine(2.0)], GenerationOptions(max_new_tokens=4, temperature=0.0))
    assert freed_when_emptied == [True]  # the cache was emptied with the attempt's tensors already gone
    assert attempt[0]() is None  # the exception held while the batch is retried smaller keeps none of them
    assert caught.value.__cause__ is None and caught.value.__context__ is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_out_of_memory_leaves_the_failed_attempts_memory_free(tiny_awq_checkpoint: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from serve.generation import EngineOutOfMemory

    engine = QwenOmniEngine.load(tiny_awq_checkpoint, device="cuda")
    try:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()

        def generate(**_: object) -> torch.Tensor:
            # What a failed attempt holds in its frame (KV cache, activations), alive as long as its traceback.
            kv_cache = torch.empty(256 * 1024**2, dtype=torch.uint8, device="cuda")
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated, holding {kv_cache.numel()} bytes)")

        monkeypatch.setattr(engine.model, "generate", generate)
        with pytest.raises(EngineOutOfMemory):
            engine.transcribe_batch([sine(2.0)], GenerationOptions(max_new_tokens=4, temperature=0.0))
        torch.cuda.synchronize()
        # Nothing of the attempt is allocated while the caller retries: not the frame's tensor, not the cache.
        assert torch.cuda.memory_allocated() - before < 16 * 1024**2
        assert torch.cuda.memory_reserved() - before < 64 * 1024**2  # and the allocator gave it back
    finally:
        engine.close()
