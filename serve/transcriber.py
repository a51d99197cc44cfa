"""The transcription pipeline: decode -> segments -> engine -> clean text pieces -> Transcript.

It runs on the job worker thread, the only caller of the model. The model is taken from the manager at
the first segment that is not silence (a silent file never loads it) and held until the file is done.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .audio import decode_segments
from .engine import GenerationOptions
from .model_manager import ModelManager
from .text import clean_transcript
from .transcript import Piece, Transcript

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranscriptionParams:
    """Per-request settings (the guide's form fields)."""

    segment_duration: float
    max_new_tokens: int
    temperature: float
    repetition_penalty: float
    enable_s2t: bool

    @property
    def generation(self) -> GenerationOptions:
        return GenerationOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                 repetition_penalty=self.repetition_penalty)


class SpeechRecognizer(Protocol):
    def transcribe(self, samples: np.ndarray, options: GenerationOptions) -> str: ...


class Transcriber:
    def __init__(self, models: ModelManager[SpeechRecognizer], *, opencc_config: str = "s2t",
                 scratch_dir: Path | None = None) -> None:
        self.models = models
        self.opencc_config = opencc_config
        self.scratch_dir = scratch_dir

    def __call__(self, audio_path: Path, params: TranscriptionParams) -> Transcript:
        pieces: list[Piece] = []
        duration = 0.0
        to_traditional = self.opencc_config if params.enable_s2t else None
        with ExitStack() as held:
            engine: SpeechRecognizer | None = None
            for segment in decode_segments(audio_path, params.segment_duration, self.scratch_dir):
                duration = segment.end
                if segment.is_silent():
                    continue  # nothing to hear: do not load or ask the model
                if engine is None:
                    # Held until the whole file is done, so the idle timer cannot unload between segments.
                    engine = held.enter_context(self.models.use())
                raw = engine.transcribe(segment.samples, params.generation)
                text = clean_transcript(raw, to_traditional_config=to_traditional)
                log.debug("segment %d [%.2f-%.2f]: %r", segment.index, segment.start, segment.end, text)
                pieces.append(Piece(start=segment.start, end=segment.end, text=text))
        return Transcript(pieces=tuple(pieces), duration=duration)
