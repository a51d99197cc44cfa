"""AWQ: the GEMM packing, the int4 kernels, and loading a tiny checkpoint in the published AWQ layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import build_tiny_checkpoints as builder
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from serve.engines import EngineLoadError, awq
from serve.engines.qwen2_5_omni import QwenOmniEngine


def random_awq_linear(in_features: int = 256, out_features: int = 64, group: int = 128):  # type: ignore[no-untyped-def]
    weight = torch.randn(out_features, in_features) * 0.05
    return weight, builder.awq_quantize(weight, group)


def test_pack_unpack_roundtrip() -> None:
    values = torch.randint(0, 16, (32, 64), dtype=torch.int32)
    assert torch.equal(awq.unpack_awq(builder.awq_pack(values)), values)


def test_dequantized_weight_is_close_to_the_original() -> None:
    weight, packed = random_awq_linear()
    restored = awq.dequantize_awq(packed["qweight"], packed["qzeros"], packed["scales"], 128)
    step = packed["scales"].float().max().item()
    assert restored.shape == weight.shape
    assert (restored - weight).abs().max().item() <= step  # round-to-nearest: within one quantisation step


def load_linear(packed: dict[str, torch.Tensor], bias: torch.Tensor | None, dtype: torch.dtype) -> awq.AwqGemmLinear:
    in_features = packed["qweight"].shape[0]
    out_features = packed["scales"].shape[1]
    layer = awq.AwqGemmLinear(in_features, out_features, bias is not None, 128)
    state = dict(packed)
    if bias is not None:
        state["bias"] = bias
    layer.load_state_dict(state)
    layer.scales = layer.scales.to(dtype)
    layer.prepare()
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_kernel_matches_dequantized_matmul(dtype: torch.dtype) -> None:
    _, packed = random_awq_linear(256, 64)
    bias = torch.randn(64)
    layer = load_linear(packed, bias, dtype)
    assert layer.kernel == "int4pack-cpu"
    assert layer.qweight is None  # the AWQ tensors are freed once repacked
    x = torch.randn(2, 5, 256).to(dtype)
    expected = x.float() @ awq.dequantize_awq(packed["qweight"], packed["qzeros"], packed["scales"], 128).t() + bias
    tolerance = 1e-4 if dtype == torch.float32 else 0.05
    assert torch.allclose(layer(x).float(), expected, atol=tolerance, rtol=tolerance)
    assert layer(x).shape == (2, 5, 64)


@pytest.mark.parametrize("tiles", [2, 4, 8])
def test_the_int4_layout_unpacks_to_the_values_packed(tiles: int) -> None:
    unpacker = awq.Int4Unpacker("int4pack-cpu", tiles, torch.device("cpu"))
    values = torch.randint(0, 16, (192, 512), dtype=torch.int32)
    packed = awq._pack_int4(values, "int4pack-cpu", tiles)
    assert torch.equal(unpacker.unpack(packed, 192, 512).int(), values)


def test_an_unknown_layout_is_refused_and_large_inputs_keep_the_int4_kernel(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(awq, "_pack_int4", lambda q, kernel, tiles: torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        q.flip(0).to(torch.int32), tiles))  # a layout the unpacker does not know: rows reversed
    with pytest.raises(awq.AwqCheckpointError, match="not the one this unpacker knows"):
        awq.Int4Unpacker("int4pack-cpu", 2, torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_inputs_run_on_the_dequantised_weight_with_the_same_result(dtype: torch.dtype) -> None:
    _, packed = random_awq_linear(256, 128)
    bias = torch.randn(128)
    layer = load_linear(packed, bias, dtype)
    x = torch.randn(3, 40, 256).to(dtype)
    kernel_out = layer(x)
    expected = awq.dequantize_awq(packed["qweight"], packed["qzeros"], packed["scales"], 128)
    assert torch.allclose(layer.dequantized_weight().float(), expected, atol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    layer.dequant_rows = 100  # 120 rows: above; 2 rows: below
    tolerance = 1e-4 if dtype == torch.float32 else 0.05
    assert torch.allclose(layer(x).float(), kernel_out.float(), atol=tolerance, rtol=tolerance)
    assert torch.equal(layer(x[:1, :2]), kernel_out[:1, :2])  # small inputs: the int4 kernel, unchanged


def test_the_engine_sets_the_dequant_threshold_on_every_decoder_layer(tiny_awq_checkpoint: Path) -> None:
    default = QwenOmniEngine.load(tiny_awq_checkpoint, device="cpu")
    assert {m.dequant_rows for m in default.model.modules() if isinstance(m, awq.AwqGemmLinear)} == {16}  # CPU
    default.close()
    engine = QwenOmniEngine.load(tiny_awq_checkpoint, device="cpu", awq_dequant_rows=64)
    try:
        layers = [m for m in engine.model.modules() if isinstance(m, awq.AwqGemmLinear)]
        assert layers and all(m.dequant_rows == 64 for m in layers)
        ids = torch.randint(0, 300, (1, 80))
        with torch.inference_mode():
            dequantised = engine.model(input_ids=ids).logits
            assert awq.set_dequant_rows(engine.model, 0) == 0
            on_the_kernel = engine.model(input_ids=ids).logits
        assert torch.allclose(dequantised, on_the_kernel, atol=1e-3), (dequantised - on_the_kernel).abs().max()
    finally:
        engine.close()


def test_unprepared_layer_refuses_to_run() -> None:
    layer = awq.AwqGemmLinear(128, 8, False, 128)
    with pytest.raises(RuntimeError, match="prepare"):
        layer(torch.randn(1, 128))


@pytest.mark.parametrize(("config", "message"), [
    ({"quant_method": "gptq", "bits": 4}, "quant_method"),
    ({"quant_method": "awq", "version": "gemv", "bits": 4}, "GEMM"),
    ({"quant_method": "awq", "bits": 8}, "bit width"),
    ({"quant_method": "awq", "bits": 4, "zero_point": False}, "zero points"),
])
def test_unsupported_quantization_configs_are_rejected(config: dict, message: str) -> None:
    with pytest.raises(awq.AwqCheckpointError, match=message):
        awq.OmniAwqConfig.from_checkpoint(config)


def test_awq_checkpoint_has_the_published_layout(tiny_awq_checkpoint: Path) -> None:
    config = json.loads((tiny_awq_checkpoint / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_omni"
    assert config["quantization_config"] == {"bits": 4, "group_size": 128, "modules_to_not_convert": ["visual"],
                                             "quant_method": "awq", "version": "gemm", "zero_point": True}
    index = json.loads((tiny_awq_checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    assert {k.split(".")[0] for k in index} == {"thinker", "talker", "token2wav"}
    packed = [k for k in index if k.endswith(".qweight")]
    assert packed and all(k.startswith("thinker.model.layers.") for k in packed)
    assert "thinker.audio_tower.layers.0.self_attn.q_proj.weight" in index
    assert "thinker.visual.blocks.0.attn.q.weight" in index
    tensors = load_file(str(tiny_awq_checkpoint / index[packed[0]]))
    assert tensors[packed[0]].dtype == torch.int32
    assert tensors[packed[0].replace("qweight", "scales")].dtype == torch.float16


def test_loaded_module_tree(tiny_awq_checkpoint: Path) -> None:
    engine = QwenOmniEngine.load(tiny_awq_checkpoint, device="cpu")
    model = engine.model
    decoder_linears = [m for m in model.model.language_model.layers.modules()
                       if isinstance(m, (nn.Linear, awq.AwqGemmLinear))]
    assert decoder_linears and all(isinstance(m, awq.AwqGemmLinear) for m in decoder_linears)
    assert all(m.kernel == "int4pack-cpu" for m in decoder_linears)
    # The audio tower and the LM head stay in floating point.
    linears = [m for m in model.model.audio_tower.modules() if isinstance(m, (nn.Linear, awq.AwqGemmLinear))]
    assert linears and all(type(m) is nn.Linear and m.weight.is_floating_point() for m in linears)
    assert type(model.lm_head) is nn.Linear
    # Thinker only, audio only: the speech-output modules and the vision tower are never built.
    assert not any(name.startswith(("talker", "token2wav")) or ".visual." in name
                   for name, _ in model.named_parameters())
    assert model.model.visual is None
    assert engine.quantized
    engine.close()


def test_awq_logits_equal_the_float_model_with_dequantized_weights(tiny_checkpoint: Path,
                                                                   tiny_awq_checkpoint: Path,
                                                                   tmp_path: Path) -> None:
    """The 4-bit path computes exactly what the AWQ tensors encode."""
    reference_dir = tmp_path / "dequantized"
    shutil.copytree(tiny_checkpoint, reference_dir)
    index = json.loads((tiny_awq_checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    reference_index = json.loads((reference_dir / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in sorted(set(index.values())):
        packed = load_file(str(tiny_awq_checkpoint / shard))
        for key in [k for k in packed if k.endswith(".qweight")]:
            base = key[: -len(".qweight")]
            ref_shard = reference_dir / reference_index[f"{base}.weight"]
            ref = load_file(str(ref_shard))
            weight = awq.dequantize_awq(packed[key], packed[f"{base}.qzeros"], packed[f"{base}.scales"], 128)
            ref[f"{base}.weight"] = weight.to(torch.bfloat16).contiguous()
            save_file(ref, str(ref_shard), metadata={"format": "pt"})
    quantized = QwenOmniEngine.load(tiny_awq_checkpoint, device="cpu", awq_dequant_rows=0).model  # the int4 kernel
    reference = QwenOmniEngine.load(reference_dir, device="cpu").model
    ids = torch.randint(0, 300, (1, 20))
    with torch.inference_mode():
        got, want = quantized(input_ids=ids).logits, reference(input_ids=ids).logits
    # fp16 vs bf16 storage of the non-quantised tensors is the only difference left.
    assert torch.allclose(got, want, atol=0.02), (got - want).abs().max()


def _rewrite_shards(checkpoint: Path, edit) -> None:  # type: ignore[no-untyped-def]
    index_path = checkpoint / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for shard in sorted(set(index["weight_map"].values())):
        tensors = edit(load_file(str(checkpoint / shard)))
        save_file(tensors, str(checkpoint / shard), metadata={"format": "pt"})
        for key in list(index["weight_map"]):
            if index["weight_map"][key] == shard and key not in tensors:
                del index["weight_map"][key]
        for key in tensors:
            index["weight_map"][key] = shard
    index_path.write_text(json.dumps(index))


def test_missing_packed_tensors_fail_the_load(tiny_awq_checkpoint: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_awq_checkpoint, tmp_path / "broken")
    _rewrite_shards(broken, lambda t: {k: v for k, v in t.items() if not k.endswith("mlp.down_proj.qweight")})
    with pytest.raises(EngineLoadError, match="AWQ tensors"):
        QwenOmniEngine.load(broken, device="cpu")


def test_packed_tensors_outside_the_decoder_fail_the_load(tiny_awq_checkpoint: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_awq_checkpoint, tmp_path / "broken")

    def quantize_audio_tower(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = "thinker.audio_tower.layers.0.fc1.weight"
        if key in tensors:
            weight = tensors.pop(key).float()
            pad = torch.zeros(weight.shape[0], 128 - weight.shape[1] % 128 if weight.shape[1] % 128 else 0)
            for suffix, value in builder.awq_quantize(torch.cat([weight, pad], 1)).items():
                tensors[f"thinker.audio_tower.layers.0.fc1.{suffix}"] = value
        return tensors

    _rewrite_shards(broken, quantize_audio_tower)
    with pytest.raises(EngineLoadError, match="outside the thinker's decoder"):
        QwenOmniEngine.load(broken, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_int4_kernel_matches_dequantized_matmul() -> None:
    _, packed = random_awq_linear(512, 256)
    bias = torch.randn(256)
    layer = awq.AwqGemmLinear(512, 256, True, 128)
    layer.load_state_dict({**packed, "bias": bias})
    layer = layer.cuda()
    layer.prepare()
    expected_kernel = "tinygemm-cuda" if torch.cuda.get_device_capability()[0] >= 8 else "dequantize"
    assert layer.kernel == expected_kernel
    x = torch.randn(3, 512, device="cuda", dtype=torch.bfloat16)
    expected = x.float() @ awq.dequantize_awq(packed["qweight"], packed["qzeros"], packed["scales"],
                                              128).cuda().t() + bias.cuda()
    assert torch.allclose(layer(x).float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tinygemm_layout_unpacks_and_dequantised_matmul_matches() -> None:
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("tinygemm needs compute capability 8.0")
    for tiles in (2, 4, 8):
        unpacker = awq.Int4Unpacker("tinygemm-cuda", tiles, torch.device("cuda"))
        values = torch.randint(0, 16, (256, 1024), dtype=torch.int32, device="cuda")
        assert torch.equal(unpacker.unpack(awq._pack_int4(values, "tinygemm-cuda", tiles), 256, 1024).int(), values)
    _, packed = random_awq_linear(512, 256)
    layer = awq.AwqGemmLinear(512, 256, False, 128)
    layer.load_state_dict(packed)
    layer = layer.cuda()
    layer.prepare()
    x = torch.randn(600, 512, device="cuda", dtype=torch.bfloat16)
    on_the_kernel = layer(x)
    layer.dequant_rows = 512
    assert torch.allclose(layer(x).float(), on_the_kernel.float(), atol=0.05, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine_runs_the_awq_checkpoint(tiny_awq_checkpoint: Path) -> None:
    import numpy as np

    from serve.engines.qwen2_5_omni import GenerationOptions

    engine = QwenOmniEngine.load(tiny_awq_checkpoint, device="cuda")
    assert engine.device.type == "cuda"
    text = engine.transcribe(np.zeros(16000, dtype=np.float32) + 0.01, GenerationOptions(8, 0.0, 1.0))
    assert isinstance(text, str)
    engine.close()
