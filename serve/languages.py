"""The languages a request may name: ISO 639-1 codes (and yue), each with the name the model is told.

Kept apart from the engine so that light users (request parsing, the OpenAPI document, the evaluation tool)
need not import torch.
"""

from __future__ import annotations

LANGUAGES = {
    "en": "English", "zh": "Chinese", "yue": "Cantonese", "ja": "Japanese", "ko": "Korean", "de": "German",
    "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "ru": "Russian", "ar": "Arabic",
    "hi": "Hindi", "id": "Indonesian", "th": "Thai", "vi": "Vietnamese", "tr": "Turkish", "nl": "Dutch",
    "pl": "Polish", "sv": "Swedish", "ms": "Malay", "uk": "Ukrainian", "cs": "Czech", "fi": "Finnish",
}

# The other languages Qwen3-ASR transcribes (and may say it heard); Qwen2.5-Omni is not asked for them.
QWEN3_ASR_OTHER_LANGUAGES = {"da": "Danish", "el": "Greek", "fa": "Persian", "fil": "Filipino", "hu": "Hungarian",
                             "mk": "Macedonian", "ro": "Romanian"}
# Every language a request may name; the engine's capabilities (serve.engines) say which of them it takes.
ALL_LANGUAGES = {**LANGUAGES, **QWEN3_ASR_OTHER_LANGUAGES}

# Qwen2.5-Omni: the languages above its cookbook's instruction names.
QWEN2_5_OMNI_LANGUAGES = frozenset(LANGUAGES)
# Qwen3-ASR: transformers' LANGUAGE_CODE_TO_NAME of its processor (which imports torch;
# tests/engines/test_qwen3_asr.py keeps this in step with it).
QWEN3_ASR_LANGUAGES = frozenset(ALL_LANGUAGES) - {"uk"}
