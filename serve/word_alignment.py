"""Word times for transcribed segments: the forced aligner beside the model, and the words' way to the answer.

The :class:`AlignerSlot` holds the aligner (:mod:`serve.aligner`) for the thread that owns the GPU: the batch
runner loads it on the first segment that asks for word times and aligns right after generating, so the two
models' passes never overlap; the slot is closed with the model (the idle timeout unloads both).

Alignment never fails a transcription. A segment whose words cannot be timed (a language the aligner does
not cover, an aligner that did not load) keeps no words and a note saying why; its subtitle cues are then
timed as without an aligner. The words are aligned on the cleaned text before OpenCC, and
:func:`words_onto` carries their times onto the converted text, so that the characters of the answer are
exactly those it has without alignment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .generation import SegmentResult
from .language_id import detect
from .model_manager import free_accelerator_memory
from .text import clean_parts
from .transcript import Word, word_spans

log = logging.getLogger(__name__)

# After a failed load, segments asking for word times go without them for this long before the next try.
RETRY_LOAD_SECONDS = 60.0


class Aligner(Protocol):
    def align(self, clips: list[np.ndarray], texts: list[str], language: str = "auto") -> list[list[Word]]: ...
    def unsupported(self, language: str) -> str | None: ...
    def memory_bytes(self) -> int: ...
    def close(self) -> None: ...


class AlignerSlot:
    """The aligner for the GPU's owner thread: loaded on first use, closed with the model."""

    def __init__(self, loader: Callable[[], Aligner] | None, *, locate: Callable[[], Path] | None = None) -> None:
        """``loader`` loads the aligner (None: word times are off); ``locate`` finds or downloads its checkpoint
        (run by :meth:`prepare`, on the thread that loads the model, so the GPU's thread never downloads)."""
        self._loader = loader
        self._locate = locate
        self._aligner: Aligner | None = None
        self._lock = threading.Lock()  # /health reads the state from other threads
        self.last_error: str | None = None
        self._failed_at = -RETRY_LOAD_SECONDS
        self.segments_aligned = 0
        self.align_seconds = 0.0

    @property
    def configured(self) -> bool:
        return self._loader is not None

    @property
    def loaded(self) -> bool:
        return self._aligner is not None

    def memory_bytes(self) -> int:
        with self._lock:
            return self._aligner.memory_bytes() if self._aligner is not None else 0

    def state(self) -> dict[str, Any]:
        """What /health shows."""
        return {"configured": self.configured, "loaded": self.loaded,
                "memory_gb": round(self.memory_bytes() / 1024**3, 3), "error": self.last_error}

    def prepare(self) -> int:
        """Find (or download) the checkpoint before it is needed; return the bytes its weights will take (0 when
        there is none or it cannot be found: the first use then says why)."""
        if self._locate is None or self._aligner is not None:
            return 0
        try:
            path = self._locate()
        except Exception as exc:  # reported by the first segment that asks for word times
            log.error("the aligner's checkpoint is not available: %s", exc)
            return 0
        return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))

    def get(self) -> tuple[Aligner | None, str | None]:
        """The aligner, loading it if needed; else None and why there is none."""
        if self._loader is None:
            return None, "the server has no aligner (start it with --aligner-path)"
        if self._aligner is not None:
            return self._aligner, None
        if time.monotonic() - self._failed_at < RETRY_LOAD_SECONDS:
            return None, f"the aligner could not be loaded: {self.last_error}"
        try:
            aligner = self._loader()
        except Exception as exc:  # the transcription goes on without word times
            log.exception("loading the aligner failed")
            self.last_error = str(exc) or type(exc).__name__
            self._failed_at = time.monotonic()
            return None, f"the aligner could not be loaded: {self.last_error}"
        with self._lock:
            self._aligner = aligner
        self.last_error = None
        return aligner, None

    def align(self, clips: list[np.ndarray], results: list[SegmentResult], language: str) -> list[SegmentResult]:
        """``results`` with the words of each segment timed in its clip (or a note saying why not)."""
        aligner, why_not = self.get()
        if aligner is None:
            return [result.aligned(None, why_not) for result in results]
        started = time.monotonic()
        texts = [clean_parts(result.parts) for result in results]
        # One call per language: a request that names none is split as the text looks (Japanese, Korean).
        languages = [language if language != "auto" else _language_of(text) for text in texts]
        aligned: list[SegmentResult] = list(results)
        for lang in dict.fromkeys(languages):
            group = [i for i, other in enumerate(languages) if other == lang]
            reason = aligner.unsupported(lang)
            if reason is not None:
                for i in group:
                    aligned[i] = results[i].aligned(None, f"no word times: {reason}")
                continue
            words, failure = _try_align(aligner, [clips[i] for i in group], [texts[i] for i in group], lang)
            if words is None and len(group) > 1:
                # One call for the group failed (out of memory, a bad clip): each segment alone, so that only
                # the one at fault goes without words.
                log.warning("aligning %d segments together failed (%s): aligning them one by one", len(group),
                            failure)
                singles = [_try_align(aligner, [clips[i]], [texts[i]], lang) for i in group]
                for i, (one, why) in zip(group, singles, strict=True):
                    aligned[i] = results[i].aligned(tuple(one[0]), None) if one is not None else \
                        results[i].aligned(None, f"no word times: alignment failed: {why}")
                continue
            for n, i in enumerate(group):
                aligned[i] = results[i].aligned(tuple(words[n]), None) if words is not None else \
                    results[i].aligned(None, f"no word times: alignment failed: {failure}")
        self.segments_aligned += len(results)
        self.align_seconds += time.monotonic() - started
        return aligned

    def close(self) -> None:
        """Unload the aligner (with the model, on the thread that used it)."""
        with self._lock:
            aligner, self._aligner = self._aligner, None
        if aligner is not None:
            aligner.close()


def _try_align(aligner: Aligner, clips: list[np.ndarray], texts: list[str], language: str
               ) -> tuple[list[list[Word]] | None, str | None]:
    """The aligner's words, or None and why not. The exception (and the tensors its traceback holds) is gone
    when this returns, so a retry has the memory back."""
    try:
        return aligner.align(clips, texts, language), None
    except Exception as exc:  # word times are an extra: never fail the transcript
        log.exception("aligning %d segment(s) failed", len(clips))
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    free_accelerator_memory()
    return None, reason


def _language_of(text: str) -> str:
    """The language to split ``text``'s words by when the request named none: the detected one if it needs
    splitting of its own (Japanese, Korean), else the aligner's default (spaces, one CJK character a word)."""
    code = detect(text)
    return code if code in ("ja", "ko") else "auto"


def words_onto(plain: str, converted: str, words: tuple[Word, ...], convert: Callable[[str], str]) -> tuple[Word, ...]:
    """The words of ``plain`` (the text they were aligned on) as they read in ``converted`` (``convert(plain)``,
    OpenCC), with the same times. Conversion keeps most lengths; where a phrase changes length, a word's place
    is the converted length of the text before it."""
    if plain == converted:
        return words
    same_length = len(plain) == len(converted)
    out = []
    floor = 0
    for word, span in zip(words, word_spans(plain, words), strict=True):
        if span is None:
            out.append(word)
            continue
        start, end = span
        if not same_length:
            start, end = len(convert(plain[:start])), len(convert(plain[:end]))
        start, end = max(start, floor), min(max(end, start), len(converted))
        floor = end
        out.append(Word(converted[start:end] or word.word, word.start, word.end))
    return tuple(out)
