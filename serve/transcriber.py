"""The transcription pipeline: decode -> segments -> engine -> clean text pieces -> Transcript.

It runs on a job's worker thread. Segments are submitted in groups as large as the recognizer's batch, so
that a batching recognizer (the only caller of the model) generates them together, possibly with other
jobs' segments. The model is taken from the manager at the first segment that is not silence (a silent
file never loads it) and held until the file is done.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .audio import Segment, decode_segments
from .engine import EngineOutOfMemory, GenerationOptions, instruction_for
from .model_manager import ModelManager
from .text import clean_transcript, join_pieces
from .transcript import Piece, Transcript

log = logging.getLogger(__name__)

# segments done, total (an estimate), audio seconds done, and the segment's piece (None when it was silent)
ProgressCallback = Callable[[int, int | None, float, dict | None], None]


class TranscriptionStopped(Exception):
    """The caller asked to stop (a cancelled job) between two segments."""


class SegmentOutOfMemory(Exception):
    """A segment did not fit in accelerator memory, even split in two."""

    def __init__(self, segment: Segment) -> None:
        super().__init__(f"out of memory on the segment at {segment.start:.1f}-{segment.end:.1f} s, "
                         "even split in two")
        self.segment = segment


@dataclass(frozen=True)
class TranscriptionParams:
    """Per-request settings (the guide's form fields)."""

    segment_duration: float
    max_new_tokens: int
    temperature: float
    repetition_penalty: float
    enable_s2t: bool = False
    language: str = "auto"
    prompt: str = ""
    opencc: str | None = None  # the OpenCC conversion to apply (s2t, s2tw, s2twp, s2hk, t2s), if any

    @property
    def generation(self) -> GenerationOptions:
        return GenerationOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                 repetition_penalty=self.repetition_penalty,
                                 instruction=instruction_for(self.language, self.prompt))


class SpeechRecognizer(Protocol):
    def transcribe(self, samples: np.ndarray, options: GenerationOptions) -> str: ...


def submit_segment(recognizer: SpeechRecognizer, samples: np.ndarray, options: GenerationOptions) -> Future[str]:
    """Queue a segment on a batching recognizer; run it at once on a plain one."""
    submit = getattr(recognizer, "submit", None)
    if submit is not None:
        return submit(samples, options)
    future: Future[str] = Future()
    try:
        future.set_result(recognizer.transcribe(samples, options))
    except Exception as exc:
        future.set_exception(exc)
    return future


class Transcriber:
    def __init__(self, models: ModelManager[SpeechRecognizer], *, scratch_dir: Path | None = None) -> None:
        self.models = models
        self.scratch_dir = scratch_dir

    def __call__(self, audio_path: Path, params: TranscriptionParams, *, expected_duration: float | None = None,
                 progress: ProgressCallback | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Transcript:
        pieces: list[Piece] = []
        duration = 0.0
        total = math.ceil(expected_duration / params.segment_duration) if expected_duration else None
        group: list[tuple[int, Segment]] = []  # segments decoded, not yet transcribed

        with ExitStack() as held:
            recognizer: SpeechRecognizer | None = None

            def flush() -> None:
                """Submit the group at once (one batch), then collect its texts in order."""
                futures = [submit_segment(recognizer, s.samples, params.generation) if not s.is_silent() else None
                           for _, s in group]
                for (done, segment), future in zip(group, futures, strict=True):
                    piece = None
                    if future is not None:
                        text = segment_text(recognizer, segment, future, params)
                        log.debug("segment %d [%.2f-%.2f]: %r", segment.index, segment.start, segment.end, text)
                        piece = Piece(start=segment.start, end=segment.end, text=text)
                        pieces.append(piece)
                    if progress is not None:
                        progress(done, max(total, done) if total else None, segment.cut_end,
                                 piece.to_dict() if piece else None)
                group.clear()

            for done, segment in enumerate(decode_segments(audio_path, params.segment_duration,
                                                           self.scratch_dir), start=1):
                if should_stop is not None and should_stop():
                    raise TranscriptionStopped()
                duration = segment.cut_end
                if recognizer is None and not segment.is_silent():
                    # Taken at the first speech (a silent file never loads the model) and held until the
                    # whole file is done, so the idle timer cannot unload it between segments.
                    recognizer = held.enter_context(self.models.use())
                group.append((done, segment))
                if len(group) >= getattr(recognizer, "batch_size", 1):
                    flush()
            flush()
        return Transcript(pieces=tuple(pieces), duration=duration)


def segment_text(recognizer: SpeechRecognizer, segment: Segment, future: Future[str],
                 params: TranscriptionParams) -> str:
    """A segment's clean text from its pending result; out of memory, the segment is retried in two halves."""

    def clean(raw: str) -> str:
        return clean_transcript(raw, opencc=params.opencc)

    try:
        return clean(future.result())
    except EngineOutOfMemory as first:
        # Alone it did not fit: the smaller batch is half a segment.
        log.warning("out of memory at %.1f-%.1f s (%s): retrying in two halves", segment.start, segment.end, first)
        try:
            return join_pieces([clean(recognizer.transcribe(half, params.generation))
                                for half in np.array_split(segment.samples, 2)])
        except EngineOutOfMemory as second:
            raise SegmentOutOfMemory(segment) from second
