#!/usr/bin/env python3
"""Build a tiny, randomly initialised Qwen3-ASR checkpoint for tests and development.

It copies the layout of the published ``Qwen/Qwen3-ASR-1.7B-hf`` and ``-0.6B-hf`` (what transformers'
``convert_qwen3_asr_to_hf.py`` writes), through transformers' own ``save_pretrained``:

    config.json              Qwen3ASRConfig, flat (audio_config, text_config), architectures
                             ["Qwen3ASRForConditionalGeneration"], audio_token_id
    generation_config.json   greedy, the two end tokens, 512 new tokens (the published defaults)
    model.safetensors        bf16 weights: model.audio_tower.*, model.multi_modal_projector.*,
                             model.language_model.*, lm_head.*
    processor_config.json    Qwen3ASRProcessor with its Qwen3ASRFeatureExtractor (128 mel bins, 16 kHz)
    chat_template.jinja      the published ASR template: a system turn (the context prompt), the audio, and
                             the assistant turn the language is forced in ("language English<asr_text>")
    tokenizer.json, tokenizer_config.json
                             byte-level BPE with the model's special tokens (<|audio_start|>, <|audio_pad|>,
                             <|audio_end|>) and <asr_text>, an added token that is not special (as published)

The same tiny widths as the aligner's builder (one family). Random weights give random text: tests check
the plumbing, never the words.

Usage: python scripts/build_tiny_asr.py OUT_DIR   (writes OUT_DIR/Qwen3-ASR-tiny, ~1 MB).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_tiny_aligner import builder_main, tiny_qwen3_asr

TINY_ASR_NAME = "Qwen3-ASR-tiny"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>",
                  "<|audio_pad|>"]
# Added but not special, as published: it survives skip_special_tokens, and the parser splits on it.
TEXT_TOKENS = ("<asr_text>",)

# ASR_CHAT_TEMPLATE of transformers' convert_qwen3_asr_to_hf.py (the published -hf template), without the
# training-only {% generation %} markers.
ASR_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system_text='') -%}"
    "{%- for m in messages -%}{%- if m.role == 'system' -%}"
    "{%- if m.content is string -%}{%- set ns.system_text = ns.system_text + m.content -%}"
    "{%- else -%}{%- for c in m.content -%}{%- if c.type == 'text' and (c.text is defined) -%}"
    "{%- set ns.system_text = ns.system_text + c.text -%}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set ns2 = namespace(audio_tokens='') -%}"
    "{%- for m in messages -%}{%- if m.content is not string -%}{%- for c in m.content -%}"
    "{%- if c.type == 'audio' or ('audio' in c) or ('audio_url' in c) -%}"
    "{%- set ns2.audio_tokens = ns2.audio_tokens + '<|audio_start|><|audio_pad|><|audio_end|>' -%}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{{- '<|im_start|>system\\n' + ns.system_text + '<|im_end|>\\n' -}}"
    "{{- '<|im_start|>user\\n' + ns2.audio_tokens + '<|im_end|>\\n' -}}"
    "{%- for m in messages -%}{%- if m.role == 'assistant' -%}"
    "{%- set ns3 = namespace(assistant_text='') -%}"
    "{%- if m.content is string -%}{%- set ns3.assistant_text = m.content -%}"
    "{%- else -%}{%- for c in m.content -%}{%- if c.type == 'text' and (c.text is defined) -%}"
    "{%- set ns3.assistant_text = ns3.assistant_text + c.text -%}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_start|>assistant\\n' -}}{{- ns3.assistant_text + '<|im_end|>\\n' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def build_asr(out_dir: Path, seed: int = 1234) -> Path:
    """Build the tiny Qwen3-ASR checkpoint under ``out_dir``; return its path."""
    from transformers import (
        GenerationConfig,
        Qwen3ASRFeatureExtractor,
        Qwen3ASRForConditionalGeneration,
        Qwen3ASRProcessor,
    )

    out = Path(out_dir) / TINY_ASR_NAME
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, config, ids = tiny_qwen3_asr(SPECIAL_TOKENS, TEXT_TOKENS,
                                            architectures=["Qwen3ASRForConditionalGeneration"])
    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=(ids["<|endoftext|>"], ids["<|im_end|>"]),
                                               pad_token_id=ids["<|im_end|>"], do_sample=False, max_new_tokens=512)
    model.save_pretrained(out)
    Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer,
                      chat_template=ASR_CHAT_TEMPLATE).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    return builder_main(build_asr, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
