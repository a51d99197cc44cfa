"""The language of a transcript, when the request did not name one: what OpenAI's answers report.

Qwen3-ASR names the language it heard, and that is what is reported. Qwen2.5-Omni is asked to transcribe,
not to say which language it heard, so for it the language is identified from the transcript it wrote:
py3langid (a maintained port of langid.py, a naive Bayes model over byte n-grams), limited to the languages
requests may name. It is reliable for a sentence or more of text in one language (0.99+ on the test
sentences) and guesses on a word or two: below ``MIN_CONFIDENCE`` the language is reported as unknown.
Cantonese reads as Chinese (langid.py has no Cantonese).
"""

from __future__ import annotations

import functools
from typing import Any

from .languages import LANGUAGES, QWEN3_ASR_OTHER_LANGUAGES

MIN_CONFIDENCE = 0.5
MIN_CHARACTERS = 6  # "hello" alone scores 0.25 for Finnish


@functools.cache
def _identifier() -> Any:
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier  # 1 s to load: only when needed

    identifier = LanguageIdentifier.from_model_file(MODEL_DIR / MODEL_FILE, norm_probs=True)
    identifier.set_languages([code for code in LANGUAGES if code in identifier.nb_classes])
    return identifier


def detect(text: str) -> str | None:
    """The ISO code of the language ``text`` is written in, or None when there is too little text to tell."""
    text = " ".join(text.split())
    if len(text) < MIN_CHARACTERS:
        return None
    code, confidence = _identifier().classify(text)
    return code if confidence >= MIN_CONFIDENCE else None


def transcript_language(requested: str, text: str, heard: str | None = None) -> str | None:
    """The language to report for a transcript: the one the request named, else the one the model said it
    heard (Qwen3-ASR names it), else the one identified from the text."""
    if requested != "auto":
        return requested
    return heard or detect(text)


def openai_name(code: str | None) -> str:
    """OpenAI's form: the language's English name in lower case ("english", "chinese"), or "unknown"."""
    names = {**LANGUAGES, **QWEN3_ASR_OTHER_LANGUAGES}
    return names[code].lower() if code in names else "unknown"
