"""Word timestamps: Qwen3-ForcedAligner aligns a transcript to its audio (transformers' Qwen3ASR classes).

The aligner reads the audio and the transcript's words, each followed by two ``<timestamp>`` tokens, and
classifies every timestamp token into one of 5,000 steps of 80 ms; the processor turns the classes into a
start and an end per word (made monotonic). Its published accuracy is a mean word-boundary error of
33-53 ms in 11 languages, on up to about 300 s of audio per call.

This module is the component only: load a checkpoint in the published ``-hf`` layout, align batches of
(clip, text), and close. Which segments to align, and what the words change in the answers, is the
pipeline's business; the aligner is called from the thread that owns the GPU, like the main model.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, Qwen3ASRForTokenClassification
from transformers.models.qwen3_asr.processing_qwen3_asr import FORCED_ALIGNER_LANGUAGES

from .audio import SAMPLE_RATE
from .engines.runtime import pick_device, pick_dtype, weights_bytes
from .languages import ALL_LANGUAGES
from .transcript import Word

log = logging.getLogger(__name__)

MAX_SECONDS = 300.0  # the aligner's published limit per call (its labels reach 400 s)
# Word splitting for these languages needs a library of its own (the processor imports it when asked).
_SPLITTERS = {"ja": "nagisa", "ko": "soynlp"}


class AlignerLoadError(Exception):
    """The checkpoint cannot be loaded as a Qwen3-ForcedAligner."""


class AlignmentUnavailable(Exception):
    """The aligner cannot align this language here; cue times keep the segment-level method."""


class ForcedAligner:
    """Aligns transcripts to 16 kHz mono audio with a Qwen3-ForcedAligner checkpoint. One instance owns it."""

    def __init__(self, model: Any, processor: Any, *, checkpoint: Path, load_seconds: float) -> None:
        self.model = model
        self.processor = processor
        self.checkpoint = checkpoint
        self.load_seconds = load_seconds
        self._timestamp_id = model.config.timestamp_token_id
        self._step_ms = float(getattr(model.config, "timestamp_segment_time", None)
                              or processor.timestamp_segment_time)

    @classmethod
    def load(cls, checkpoint: Path, *, device: str = "auto") -> ForcedAligner:
        started = time.monotonic()
        checkpoint = Path(checkpoint)
        torch_device = pick_device(device)
        try:
            model = Qwen3ASRForTokenClassification.from_pretrained(
                checkpoint, dtype=pick_dtype(torch_device), device_map={"": torch_device}, local_files_only=True)
            processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise AlignerLoadError(f"loading the aligner from {checkpoint} failed: {exc}") from exc
        if getattr(model.config, "timestamp_token_id", None) is None:
            raise AlignerLoadError(f"{checkpoint} has no timestamp_token_id: not a forced aligner")
        if type(processor).__name__ != "Qwen3ASRProcessor":
            raise AlignerLoadError(f"{checkpoint} has a {type(processor).__name__}, not a Qwen3ASRProcessor")
        model.eval()
        aligner = cls(model, processor, checkpoint=checkpoint, load_seconds=time.monotonic() - started)
        log.info("loaded the aligner %s (%s) in %.1f s", checkpoint, torch_device, aligner.load_seconds)
        return aligner

    @property
    def device(self) -> torch.device:
        return self.model.device

    @staticmethod
    def unsupported(language: str) -> str | None:
        """Why ``language`` (an ISO code of serve.languages, or "auto") cannot be aligned here; None if it can."""
        if language == "auto":
            return None  # the processor's default splitting: spaces, and one CJK character per word
        name = ALL_LANGUAGES.get(language)
        if name not in FORCED_ALIGNER_LANGUAGES:
            return f"the aligner does not cover {name or language}"
        needed = _SPLITTERS.get(language)
        if needed and importlib.util.find_spec(needed) is None:
            return f"aligning {name} needs the {needed} package, which is not installed"
        return None

    def memory_bytes(self) -> int:
        """What the weights take (on the device they are on)."""
        return weights_bytes(self.model)

    def align(self, clips: list[np.ndarray], texts: list[str], language: str = "auto") -> list[list[Word]]:
        """The words of each text with their times in its clip (seconds), in order, inside the clip, never
        going back.

        Texts with nothing to align (empty, punctuation only) give no words and are not sent to the model.
        Raises AlignmentUnavailable for a language the aligner cannot take, ValueError for a clip longer
        than MAX_SECONDS (split such audio at pauses first).
        """
        if len(clips) != len(texts):
            raise ValueError(f"{len(clips)} clips but {len(texts)} texts")
        reason = self.unsupported(language)
        if reason:
            raise AlignmentUnavailable(reason)
        name = None if language == "auto" else ALL_LANGUAGES[language]
        results: list[list[Word]] = [[] for _ in texts]
        todo = [i for i, text in enumerate(texts) if self.processor.split_words_for_alignment(text, name)]
        for i in todo:
            if len(clips[i]) / SAMPLE_RATE > MAX_SECONDS:
                raise ValueError(f"a {len(clips[i]) / SAMPLE_RATE:.0f} s clip is longer than the aligner's "
                                 f"{MAX_SECONDS:.0f} s")
        if not todo:
            return results
        audio = [np.asarray(clips[i], dtype=np.float32) for i in todo]
        with torch.inference_mode():
            inputs, word_lists = self.processor.prepare_forced_aligner_inputs(
                audio=audio, transcript=[texts[i] for i in todo], language=name)
            inputs.pop("num_audio_tokens", None)
            inputs = inputs.to(self.device)
            inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
            logits = self.model(**inputs).logits
            timed = self.processor.decode_forced_alignment(logits.float(), inputs["input_ids"], word_lists,
                                                           timestamp_token_id=self._timestamp_id,
                                                           timestamp_segment_time=self._step_ms)
        for i, words in zip(todo, timed, strict=True):
            duration = len(clips[i]) / SAMPLE_RATE
            results[i] = _inside(words, duration)
        return results

    def close(self) -> None:
        """Drop every reference to the model so that its memory can be freed."""
        self.model = None
        self.processor = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _inside(words: list[dict], duration: float) -> list[Word]:
    """The processor's words, their times held inside [0, duration] and never going back (a time past the
    clip's end means the model lost the word: it ends where the clip does)."""
    out: list[Word] = []
    floor = 0.0
    for word in words:
        start = min(max(float(word["start_time"]), floor), duration)
        end = min(max(float(word["end_time"]), start), duration)
        out.append(Word(word["text"], round(start, 3), round(end, 3)))
        floor = end
    return out
