#!/usr/bin/env python3
"""Build tiny, randomly initialised Qwen2.5-Omni checkpoints for tests and development.

No weights can be downloaded in this project's environments, so the production loader is
exercised on checkpoints built here. They copy the *published* layout of
Qwen/Qwen2.5-Omni-7B and Qwen/Qwen2.5-Omni-7B-AWQ file for file:

    config.json                     full Omni config (thinker, talker, token2wav), written in the
                                    published (transformers 4.5x) format: rope_scaling, torch_dtype
    generation_config.json
    model-0000N-of-0000M.safetensors + model.safetensors.index.json
                                    weights under thinker.*, talker.*, token2wav.*, with the
                                    published key names (thinker.model.layers..., thinker.audio_tower...)
    spk_dict.pt                     speaker conditioning for token2wav
    tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json,
    added_tokens.json               byte-level BPE with Qwen2.5-Omni's special tokens
    chat_template.json              Qwen2.5-Omni's processor chat template
    preprocessor_config.json        WhisperFeatureExtractor (128 mel bins) + Qwen2-VL image processor

The AWQ variant stores the thinker's decoder-layer linears as 4-bit AWQ GEMM tensors
(qweight/qzeros int32, scales fp16, group size 128, zero point) obtained by round-to-nearest
quantisation of the same random weights, and everything else in fp16, with the top-level
``quantization_config`` that AutoAWQ writes.

Only the vocabulary and the widths are small; token ids in the config point at the tiny
tokenizer's special tokens, exactly as the published config points at the real ones.

Usage: python scripts/build_tiny_checkpoints.py OUT_DIR   (writes OUT_DIR/Qwen2.5-Omni-tiny and
OUT_DIR/Qwen2.5-Omni-tiny-AWQ; a few MB each, a few seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_NAME = "Qwen2.5-Omni-tiny"
TINY_AWQ_NAME = "Qwen2.5-Omni-tiny-AWQ"

AWQ_GROUP_SIZE = 128
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's GEMM interleaving of 8 nibbles per int32

# Qwen2.5-Omni's special tokens, in the published order (ids 151643..151664 there).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]

# Qwen2's pre-tokenisation regex (tokenizer.json of every Qwen2/2.5 model).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the tiny BPE is trained on: enough English and Chinese for merges to exist.
TRAINING_TEXT = [
    "You are a speech recognition model.",
    "Transcribe the audio into text.",
    "Transcribe the English audio into text without any punctuation marks.",
    "请将这段中文语音转换为纯文本。这是转录的文本内容。",
    "system user assistant The audio says hello world. The original content of this audio is",
    "the quick brown fox jumps over the lazy dog 0123456789",
    "語音識別 简体 繁體 字幕 第一段 第二段",
]

PREPROCESSOR_CONFIG = {
    "chunk_length": 300,
    "dither": 0.0,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_pixels": 12845056,
    "merge_size": 2,
    "min_pixels": 3136,
    "n_fft": 400,
    "n_samples": 4800000,
    "nb_max_frames": 30000,
    "padding_side": "right",
    "padding_value": 0.0,
    "patch_size": 14,
    "processor_class": "Qwen2_5OmniProcessor",
    "return_attention_mask": True,
    "sampling_rate": 16000,
    "temporal_patch_size": 2,
}


def train_bpe(special_tokens: list[str]):  # type: ignore[no-untyped-def]
    """A byte-level BPE like Qwen2's (same pre-tokenisation), trained on TRAINING_TEXT, with ``special_tokens``
    added after the merges (as in the published tokenizers)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT * 4, trainer=trainer)
    tok.add_special_tokens(special_tokens)
    return tok


def build_tokenizer(out: Path) -> dict[str, int]:
    """Write the tokenizer files in the published layout; return the ids of the special tokens."""
    tok = train_bpe(SPECIAL_TOKENS)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": t, **flags} for t, i in ids.items()},
        "additional_special_tokens": SPECIAL_TOKENS[1:14],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "processor_class": "Qwen2_5OmniProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    special_tokens_map = {
        "additional_special_tokens": SPECIAL_TOKENS[1:14],
        "eos_token": {"content": "<|im_end|>", **{k: v for k, v in flags.items() if k != "special"}},
        "pad_token": {"content": "<|endoftext|>", **{k: v for k, v in flags.items() if k != "special"}},
    }
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    _write_json(out / "special_tokens_map.json", special_tokens_map)
    _write_json(out / "added_tokens.json", ids)
    _write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    ids["user"] = tok.encode("user").ids[0]
    ids["vocab"] = tok.get_vocab_size()
    return ids


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _text_config(vocab_size: int, *, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                 model_type: str) -> dict:
    eighth = hidden // heads // 2 // 8
    return {
        "hidden_act": "silu",
        "hidden_size": hidden,
        "init_std": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": 32768,
        "max_window_layers": layers,
        "model_type": model_type,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-06,
        # Same proportions as the published [16, 24, 24] for head_dim 128.
        "rope_scaling": {"mrope_section": [2 * eighth, 3 * eighth, 3 * eighth],
                         "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def omni_config(ids: dict[str, int], *, hidden: int = 128, layers: int = 2) -> dict:
    """A full Qwen2.5-Omni config.json in the published format, with tiny widths."""
    vocab = ((ids["vocab"] + 63) // 64) * 64  # padded like the published 152064
    token_ids = {
        "audio_end_token_id": ids["<|audio_eos|>"],
        "audio_start_token_id": ids["<|audio_bos|>"],
        "audio_token_index": ids["<|AUDIO|>"],
        "image_token_index": ids["<|IMAGE|>"],
        "video_token_index": ids["<|VIDEO|>"],
        "vision_end_token_id": ids["<|vision_eos|>"],
        "vision_start_token_id": ids["<|vision_bos|>"],
    }
    thinker = {
        "architectures": ["Qwen2OmniNaViTThinkerForConditionalGeneration"],
        "audio_config": {
            "activation_dropout": 0.0,
            "activation_function": "gelu",
            "attention_dropout": 0.0,
            "d_model": 64,
            "dropout": 0.0,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 128,
            "encoder_layers": 2,
            "init_std": 0.02,
            "max_source_positions": 1500,
            "model_type": "qwen2_5_omni_audio_encoder",
            "n_window": 100,
            "num_hidden_layers": 2,
            "num_mel_bins": 128,
            "output_dim": hidden,
            "scale_embedding": False,
        },
        **token_ids,
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
        "ignore_index": -100,
        "init_std": 0.02,
        "model_type": "qwen2_5_omni_thinker",
        "pad_token_id": ids["<|endoftext|>"],
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        "text_config": _text_config(vocab, hidden=hidden, intermediate=2 * hidden, layers=layers, heads=4,
                                    kv_heads=2, model_type="qwen2_5_omni_text"),
        "torch_dtype": "bfloat16",
        "user_token_id": ids["user"],
        "vision_config": {
            "depth": 2,
            "embed_dim": 32,
            "fullatt_block_indexes": [1],
            "hidden_act": "silu",
            "hidden_size": 32,
            "in_channels": 3,
            "in_chans": 3,
            "init_std": 0.02,
            "intermediate_size": 64,
            "model_type": "qwen2_5_omni_vision_encoder",
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
            "tokens_per_second": 25,
            "window_size": 112,
        },
        "vision_token_id": ids["<|vision_pad|>"],
    }
    talker = {
        **_text_config(64, hidden=64, intermediate=128, layers=1, heads=2, kv_heads=1,
                       model_type="qwen2_5_omni_talker"),
        **token_ids,
        "architectures": ["Qwen2OmniTalkerForConditionalGeneration"],
        "attention_dropout": 0.0,
        "embedding_size": hidden,
        "head_dim": 32,
        "initializer_range": 0.02,
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        "spatial_merge_size": 2,
        "torch_dtype": "bfloat16",
        "tts_codec_end_token_id": 61,
        "tts_codec_mask_token_id": 63,
        "tts_codec_pad_token_id": 59,
        "tts_codec_start_token_id": 60,
        "tts_text_end_token_id": ids["<|fim_middle|>"],
        "tts_text_pad_token_id": ids["<|fim_prefix|>"],
        "tts_text_start_token_id": ids["<|fim_suffix|>"],
    }
    token2wav = {
        "model_type": "qwen2_5_omni_token2wav",
        "dit_config": {
            "block_size": 24,
            "dim": 32,
            "emb_dim": 16,
            "enc_attention_channels": 8,
            "enc_channels": [16, 16, 16, 16, 48],
            "enc_dilations": [1, 2, 3, 4, 1],
            "enc_dim": 16,
            "enc_emb_dim": 16,
            "enc_kernel_sizes": [5, 3, 3, 3, 1],
            "enc_res2net_scale": 2,
            "enc_se_channels": 8,
            "ff_mult": 2,
            "head_dim": 16,
            "heads": 2,
            "hidden_size": 32,
            "look_ahead_layers": [0],
            "look_backward_layers": [0],
            "mel_dim": 80,
            "model_type": "qwen2_5_omni_dit",
            "num_attention_heads": 2,
            "num_embeds": 64,
            "num_hidden_layers": 1,
            "repeats": 2,
        },
        "bigvgan_config": {
            "mel_dim": 80,
            "model_type": "qwen2_5_omni_bigvgan",
            "resblock_dilation_sizes": [[1, 3, 5]],
            "resblock_kernel_sizes": [3],
            "upsample_initial_channel": 128,
            "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4],
            "upsample_rates": [5, 3, 2, 2, 2, 2],
        },
    }
    return {
        "architectures": ["Qwen2_5OmniModel"],
        "enable_audio_output": True,
        "enable_talker": True,
        "model_type": "qwen2_5_omni",
        "talker_config": talker,
        "thinker_config": thinker,
        "token2wav_config": token2wav,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
    }


# transformers 5 nests the thinker's towers under thinker.model; the published files do not.
_PUBLISHED_PREFIXES = (
    ("thinker.model.language_model.", "thinker.model."),
    ("thinker.model.audio_tower.", "thinker.audio_tower."),
    ("thinker.model.visual.", "thinker.visual."),
)


def published_key(key: str) -> str:
    for internal, published in _PUBLISHED_PREFIXES:
        if key.startswith(internal):
            return published + key[len(internal):]
    return key


def random_omni_state_dict(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Instantiate the full Omni model from ``config`` with random weights; published key names."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the tiny ids trip "token id outside vocabulary" notes for the talker
    try:
        model = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig.from_dict(copy.deepcopy(config)))
    finally:
        hf_logging.set_verbosity(verbosity)
    state = {}
    for key, tensor in model.state_dict().items():
        if tensor.numel() == 0:
            continue
        # Random init leaves norms at 1 and biases at 0; perturb them so that a loader which
        # silently re-initialises a tensor (instead of loading it) changes the model's output.
        tensor = tensor.detach().clone()
        if tensor.is_floating_point() and key.endswith(("norm.weight", "layernorm.weight", ".bias", "ln_q.weight")):
            tensor += 0.05 * torch.randn_like(tensor)
        state[published_key(key)] = tensor.contiguous()
    return state


def is_awq_target(key: str) -> bool:
    """The linears AutoAWQ quantises in Qwen2.5-Omni: the thinker's decoder layers only."""
    return key.startswith("thinker.model.layers.") and key.endswith("_proj.weight")


def awq_pack(values: torch.Tensor) -> torch.Tensor:
    """Pack int4 values [rows, cols] into AutoAWQ GEMM int32 [rows, cols // 8]."""
    rows, cols = values.shape
    grouped = values.to(torch.int32).view(rows, cols // 8, 8)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int32)
    for shift, column in enumerate(AWQ_PACK_ORDER):
        packed |= grouped[:, :, column] << (4 * shift)
    return packed


def awq_quantize(weight: torch.Tensor, group_size: int = AWQ_GROUP_SIZE) -> dict[str, torch.Tensor]:
    """Round-to-nearest asymmetric 4-bit quantisation of a Linear weight [out, in], AWQ GEMM layout."""
    w = weight.detach().float().t().contiguous()  # AWQ stores [in, out]
    in_features, out_features = w.shape
    groups = w.view(in_features // group_size, group_size, out_features)
    w_min = groups.amin(dim=1)
    w_max = groups.amax(dim=1)
    scales = ((w_max - w_min).clamp(min=1e-5) / 15).half()
    zeros = (-w_min / scales.float()).round().clamp(0, 15).to(torch.int32)
    q = (groups / scales.float().unsqueeze(1) + zeros.unsqueeze(1)).round().clamp(0, 15).to(torch.int32)
    return {
        "qweight": awq_pack(q.view(in_features, out_features)),
        "qzeros": awq_pack(zeros),
        "scales": scales,
    }


def to_awq_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        if is_awq_target(key):
            base = key[: -len(".weight")]
            for suffix, packed in awq_quantize(tensor).items():
                out[f"{base}.{suffix}"] = packed
        else:
            out[key] = tensor.half() if tensor.is_floating_point() else tensor
    return out


def save_sharded(state: dict[str, torch.Tensor], out: Path, shards: int = 2) -> None:
    """Write safetensors shards plus the index, as the hub checkpoints are laid out."""
    keys = sorted(state)
    per_shard = -(-len(keys) // shards)
    weight_map = {}
    total = 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * per_shard:(i + 1) * per_shard]}
        save_file(part, str(out / name), metadata={"format": "pt"})
        for k, t in part.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    _write_json(out / "model.safetensors.index.json", index)


def write_checkpoint(out: Path, config: dict, state: dict[str, torch.Tensor], ids: dict[str, int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    _write_json(out / "config.json", config)
    generation = {"bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<|im_end|>"],
                  "pad_token_id": ids["<|endoftext|>"], "transformers_version": "4.50.0.dev0"}
    _write_json(out / "generation_config.json", generation)
    _write_json(out / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    save_sharded(state, out)
    dit = config["token2wav_config"]["dit_config"]
    generator = torch.Generator().manual_seed(7)
    speakers = {
        name: {
            "cond": torch.randn(dit["enc_emb_dim"], generator=generator),
            "ref_mel": torch.randn(1, 30, dit["mel_dim"], generator=generator),
            "bos_token": ids["<|im_start|>"],
        }
        for name in ("Chelsie", "Ethan")
    }
    torch.save(speakers, out / "spk_dict.pt")


def build(out_dir: Path, seed: int = 1234, layers: int = 2, hidden: int = 128) -> tuple[Path, Path]:
    """Build the fp (bf16) and AWQ tiny checkpoints under ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    scratch = out_dir / ".tokenizer"
    scratch.mkdir(parents=True, exist_ok=True)
    ids = build_tokenizer(scratch)
    config = omni_config(ids, hidden=hidden, layers=layers)
    state = random_omni_state_dict(config, seed)

    full = out_dir / TINY_NAME
    write_checkpoint(full, config, {k: v.to(torch.bfloat16) for k, v in state.items()}, ids)

    awq_config = copy.deepcopy(config)
    awq_config["torch_dtype"] = "float16"
    awq_config["thinker_config"]["torch_dtype"] = "float16"
    awq_config["talker_config"]["torch_dtype"] = "float16"
    # What AutoAWQ's save_quantized writes for Qwen2.5-Omni (its class skips only "visual").
    awq_config["quantization_config"] = {
        "bits": 4,
        "group_size": AWQ_GROUP_SIZE,
        "modules_to_not_convert": ["visual"],
        "quant_method": "awq",
        "version": "gemm",
        "zero_point": True,
    }
    awq = out_dir / TINY_AWQ_NAME
    write_checkpoint(awq, awq_config, to_awq_state_dict(state), ids)
    for f in scratch.iterdir():
        f.unlink()
    scratch.rmdir()
    return full, awq


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoints into (e.g. Qwen/)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the thinker")
    parser.add_argument("--hidden", type=int, default=128, help="thinker width (a multiple of 128)")
    args = parser.parse_args(argv)
    if args.hidden % AWQ_GROUP_SIZE:
        parser.error(f"--hidden must be a multiple of {AWQ_GROUP_SIZE} (the AWQ group size)")
    for path in build(args.out_dir, seed=args.seed, layers=args.layers, hidden=args.hidden):
        size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
        print(f"{path}  ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
