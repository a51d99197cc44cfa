"""Transcribing files in this process, without HTTP: the path the GPU smoke test and the evaluation take.

The same loader, model manager and transcription pipeline as the server (decode, cut, batch, post-process),
so what these tools measure is what the server does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .local import MODEL_NAME, LocalDestination, aligner_slot, close_runner, engine_loader
from .model_manager import ModelManager
from .params import parse_params
from .scheduler import FairScheduler
from .transcriber import Transcriber


@dataclass(frozen=True)
class Result:
    text: str
    audio_seconds: float
    seconds: float  # wall-clock time of the transcription, the model already loaded


class DirectTranscriber:
    """Loads the model the server's way once, then transcribes files one after another."""

    def __init__(self, settings: Settings, scratch_dir: Path) -> None:
        self.settings = settings
        # Never idle-unloaded between files: the tools measure transcription, not reloading.
        scheduler = FairScheduler()
        self.aligner = aligner_slot(settings)
        self.models = ModelManager(engine_loader(settings, scheduler, self.aligner), unloader=close_runner,
                                   idle_timeout=-1,
                                   name=MODEL_NAME)
        self._transcriber = Transcriber(LocalDestination(self.models, scheduler), scratch_dir=scratch_dir)

    def load(self) -> float:
        """Load the model now; return the seconds it took."""
        started = time.monotonic()
        self.models.preload()
        return time.monotonic() - started

    def transcribe(self, audio: Path, language: str = "auto", **form: str) -> Result:
        """One file, with the request parameters a client would send (``language``, ``prompt``, ...)."""
        params = parse_params({"language": language, **form}, self.settings)
        started = time.monotonic()
        transcript = self._transcriber(audio, params)
        return Result(transcript.text, transcript.duration, time.monotonic() - started)

    def close(self) -> None:
        self.models.close()
