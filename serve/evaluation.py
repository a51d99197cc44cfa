"""Scoring transcripts against references: the normalization of the published Qwen results, WER and CER.

The Qwen audio models' ASR evaluation normalizes English with Whisper's English normalizer (lower case,
punctuation removed, spellings and numbers standardized), other space-separated languages with Whisper's
basic normalizer (lower case, punctuation and symbols removed), and folds Chinese to Simplified script before
scoring it by characters. The same is done here, with the same libraries (``whisper-normalizer``, OpenCC for the
script fold, ``jiwer`` for the alignment). Their quirks come with them: a stray "..." becomes a "." token;
Thai vowel and tone marks and Indic combining marks are treated as punctuation; Korean, written without CJK
ideographs, is guessed as English unless the manifest names its language.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import jiwer

from .text import to_traditional

CHARACTER_LANGUAGES = frozenset({"zh", "yue", "ja", "th"})  # no spaces between words: scored by characters
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff\uf900-\ufaff]")


@cache
def _english():  # type: ignore[no-untyped-def]
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@cache
def _basic():  # type: ignore[no-untyped-def]
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


def guess_language(reference: str) -> str:
    """``zh`` when the reference is written in Chinese or Japanese characters, else ``en``."""
    return "zh" if _CJK.search(reference) else "en"


def by_characters(language: str) -> bool:
    return language in CHARACTER_LANGUAGES


def normalize(text: str, language: str) -> str:
    """The text as it is scored: words separated by single spaces, or (Chinese) characters with no spaces."""
    if language == "en":
        return " ".join(_english()(text).split())
    normalized = _basic()(text)
    if language in ("zh", "yue"):
        normalized = to_traditional(normalized, "t2s")  # Traditional and Simplified count as the same
    if by_characters(language):
        return "".join(normalized.split())
    return " ".join(normalized.split())


@dataclass(frozen=True)
class Score:
    """Edit operations of one hypothesis against its reference, in words or (``characters``) characters."""

    substitutions: int
    deletions: int
    insertions: int
    reference_length: int
    characters: bool

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """WER (or CER): errors over reference length; an empty reference scores 0, or 1 if anything was said."""
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else 1.0
        return self.errors / self.reference_length


def score(reference: str, hypothesis: str, language: str) -> Score:
    """Normalize both texts for ``language`` and count the edits between them."""
    characters = by_characters(language)
    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    if characters:
        ref, hyp = " ".join(ref), " ".join(hyp)  # one token per character
    if not ref.strip():
        return Score(0, 0, len(hyp.split()), 0, characters)
    if not hyp.strip():
        return Score(0, len(ref.split()), 0, len(ref.split()), characters)
    result = jiwer.process_words(ref, hyp)
    return Score(result.substitutions, result.deletions, result.insertions, len(ref.split()), characters)


def corpus_rate(scores: list[Score]) -> float | None:
    """The corpus-level rate, as published figures are computed: all errors over all reference tokens."""
    length = sum(s.reference_length for s in scores)
    if not scores:
        return None
    errors = sum(s.errors for s in scores)
    return errors / length if length else (0.0 if errors == 0 else 1.0)


def contains_words(transcript: str, expected: list[str], language: str) -> list[str]:
    """The expected words (or, for Chinese, phrases) missing from ``transcript``, compared after normalization."""
    text = normalize(transcript, language)
    if by_characters(language):
        return [word for word in expected if normalize(word, language) not in text]
    words = set(text.split())
    return [word for word in expected if not set(normalize(word, language).split()) <= words]
