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

# The languages Qwen3-ASR transcribes, of those above (transformers' LANGUAGE_CODE_TO_NAME of its processor,
# which imports torch; tests/test_qwen3_asr.py keeps this in step with it).
QWEN3_ASR_LANGUAGES = frozenset(LANGUAGES) - {"uk"}
# The other languages Qwen3-ASR may say it heard: answers name them (a request cannot name them yet).
QWEN3_ASR_OTHER_LANGUAGES = {"da": "Danish", "el": "Greek", "fa": "Persian", "fil": "Filipino", "hu": "Hungarian",
                             "mk": "Macedonian", "ro": "Romanian"}
