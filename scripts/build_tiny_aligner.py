#!/usr/bin/env python3
"""Build a tiny, randomly initialised Qwen3-ForcedAligner checkpoint for tests and development.

It copies the layout of the published ``Qwen/Qwen3-ForcedAligner-0.6B-hf`` (what transformers'
``convert_qwen3_asr_to_hf.py`` writes), through transformers' own ``save_pretrained``:

    config.json             Qwen3ASRConfig, flat (audio_config, text_config), architectures
                            ["Qwen3ASRForTokenClassification"], 5000 labels of 80 ms (timestamp_segment_time),
                            audio_token_id and timestamp_token_id pointing at the tokenizer's tokens
    model.safetensors       bf16 weights: model.audio_tower.*, model.multi_modal_projector.*,
                            model.language_model.*, score.*
    processor_config.json   Qwen3ASRProcessor with its Qwen3ASRFeatureExtractor (128 mel bins, 16 kHz)
    chat_template.jinja     the aligner's template: audio tokens, then the words joined by
                            <timestamp><timestamp>
    tokenizer.json, tokenizer_config.json
                            byte-level BPE with the aligner's special tokens (<|audio_start|>, <|audio_pad|>,
                            <|audio_end|>, <timestamp>) and the processor's audio_token names

Only the vocabulary and the widths are small (the encoder keeps the published 128 mel bins and 100-frame
windows, which the processor's token arithmetic assumes). Random weights give random times: tests check
the plumbing, never the accuracy.

Usage: python scripts/build_tiny_aligner.py OUT_DIR   (writes OUT_DIR/Qwen3-ForcedAligner-tiny, ~1 MB).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_tiny_checkpoints

TINY_ALIGNER_NAME = "Qwen3-ForcedAligner-tiny"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>",
                  "<|audio_pad|>", "<timestamp>"]

# FORCED_ALIGNER_CHAT_TEMPLATE of transformers' convert_qwen3_asr_to_hf.py (the published -hf template).
ALIGNER_CHAT_TEMPLATE = (
    "{%- set ns = namespace(audio_tokens='', words=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m.content is not string -%}"
    "{%- for c in m.content -%}"
    "{%- if c.type == 'audio' or ('audio' in c) or ('audio_url' in c) -%}"
    "{%- set ns.audio_tokens = ns.audio_tokens + '<|audio_start|><|audio_pad|><|audio_end|>' -%}"
    "{%- endif -%}"
    "{%- if c.type == 'text' and (c.text is defined) -%}"
    "{%- set ns.words = ns.words + [c.text] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- ns.audio_tokens + ns.words | join('<timestamp><timestamp>') + '<timestamp><timestamp>' -}}"
)

LABELS = 5000  # the published classify_num: 5000 steps of 80 ms, 400 s


def tiny_qwen3_asr(special_tokens: list[str], text_tokens: tuple[str, ...] = (),
                   **config: object) -> tuple[object, object, dict[str, int]]:
    """(tokenizer, Qwen3ASRConfig, token ids) of a tiny Qwen3-ASR-family checkpoint: the published audio
    encoder geometry with tiny widths, a small Qwen3 decoder, a byte-level BPE with ``special_tokens`` and
    ``text_tokens`` (added tokens that decode as text, as the published tokenizer has <asr_text>); ``config``
    adds the family member's own fields (architectures, labels, token ids)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast, Qwen3ASRConfig

    bpe = build_tiny_checkpoints.train_bpe(special_tokens)
    bpe.add_tokens([AddedToken(token, special=False, normalized=False) for token in text_tokens])
    ids = {token: bpe.token_to_id(token) for token in [*special_tokens, *text_tokens]}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                              "audio_eos_token": "<|audio_end|>"})
    qwen3_asr_config = Qwen3ASRConfig(
        # The published encoder's fixed geometry (128 mel bins, 100-frame windows of 13 positions), tiny widths.
        audio_config={"num_mel_bins": 128, "d_model": 32, "encoder_layers": 1, "num_attention_heads": 2,
                      "num_key_value_heads": 2, "encoder_ffn_dim": 64, "output_dim": 64,
                      "downsample_hidden_size": 16, "n_window": 50, "n_window_infer": 800,
                      "max_position_embeddings": 13, "scale_embedding": False},
        text_config={"model_type": "qwen3", "vocab_size": bpe.get_vocab_size(), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
                     "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
                     "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False},
        audio_token_id=ids["<|audio_pad|>"], tie_word_embeddings=False,
        pad_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|endoftext|>"], ids["<|im_end|>"]],
        **{key: (ids[value] if isinstance(value, str) and value in ids else value) for key, value in config.items()},
    )
    return tokenizer, qwen3_asr_config, ids


def build_aligner(out_dir: Path, seed: int = 1234) -> Path:
    """Build the tiny aligner under ``out_dir``; return its path."""
    from transformers import Qwen3ASRFeatureExtractor, Qwen3ASRForTokenClassification, Qwen3ASRProcessor

    out = Path(out_dir) / TINY_ALIGNER_NAME
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, config, _ids = tiny_qwen3_asr(SPECIAL_TOKENS, timestamp_token_id="<timestamp>",
                                             timestamp_segment_time=80, num_labels=LABELS,
                                             architectures=["Qwen3ASRForTokenClassification"])
    torch.manual_seed(seed)
    Qwen3ASRForTokenClassification(config).to(torch.bfloat16).save_pretrained(out)
    Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer,
                      chat_template=ALIGNER_CHAT_TEMPLATE).save_pretrained(out)
    return out


def builder_main(build: Callable[..., Path], doc: str, argv: list[str] | None = None) -> int:
    """The command line of a tiny-checkpoint builder: OUT_DIR [--seed N]; prints the path and size."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint into (e.g. Qwen/)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    path = build(args.out_dir, seed=args.seed)
    print(f"{path}  ({sum(f.stat().st_size for f in path.iterdir()) / 1e6:.1f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return builder_main(build_aligner, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
