"""This process's model as the pipeline's destination: the loader, and lanes into the shared scheduler.

The single-process server, each scale-out worker and the direct tools all transcribe this way. The model
manager loads a :class:`~serve.batching.BatchRunner` on first use; every job's lane feeds the same
:class:`~serve.scheduler.FairScheduler`, which the runner (the one caller of the model) takes batches from.
A lane takes the model at its job's first segment of speech and holds it until the job is done, so the
idle timer never unloads it between segments, and a silent file never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path

from .audio import Segment
from .batching import BatchRunner
from .checkpoint import resolve_checkpoint
from .config import APP_DIR, Settings
from .engines import EngineLoadError, spec_for_checkpoint
from .generation import GenerationOptions, SegmentResult
from .model_manager import ModelManager
from .scheduler import FairScheduler, Flow
from .word_alignment import Aligner, AlignerSlot

log = logging.getLogger(__name__)

MODEL_NAME = "Qwen2.5-Omni thinker"


class AlignerSource:
    """The forced aligner --aligner-path names: found (or downloaded) with the model, on the thread that loads
    it, so that the GPU's thread only reads the weights when the first segment asks for word times."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._path: Path | None = None

    def locate(self) -> Path:
        if self._path is None:
            s = self.settings
            self._path = resolve_checkpoint(s.aligner_path, local_only=s.local_model,  # type: ignore[arg-type]
                                            models_dir=s.models_dir, app_dir=APP_DIR)
        return self._path

    def load(self) -> Aligner:
        from .aligner import ForcedAligner  # torch and transformers, only where a model is loaded

        return ForcedAligner.load(self.locate(), device=self.settings.device)


def aligner_slot(settings: Settings) -> AlignerSlot:
    """The slot for the aligner of the settings (an empty one when word times are off)."""
    if not settings.aligner_path:
        return AlignerSlot(None)
    source = AlignerSource(settings)
    return AlignerSlot(source.load, locate=source.locate)


def engine_loader(settings: Settings, scheduler: FairScheduler, aligner: AlignerSlot) -> Callable[[], BatchRunner]:
    """Load the checkpoint the settings name and start a runner taking batches from ``scheduler`` (and using
    ``aligner`` for word times)."""

    def load() -> BatchRunner:
        checkpoint = resolve_checkpoint(settings.checkpoint_path, local_only=settings.local_model,
                                        models_dir=settings.models_dir, app_dir=APP_DIR)
        spec = spec_for_checkpoint(checkpoint)  # by the config's model_type
        can = spec.capabilities
        if (problem := can.segment_flag_problem(settings.segment_duration)) is not None:
            raise EngineLoadError(problem)
        for flag, given, applies in (("--low-vram", settings.low_vram, can.low_vram),
                                     ("--compiled-decode", settings.compiled_decode, can.compiled_decode)):
            if given and not applies:
                log.warning("%s does not apply to %s: it runs without", flag, can.family)
        low_vram = settings.low_vram and can.low_vram
        engine = spec.engine_class().load(checkpoint, device=settings.device, flash_attn2=settings.flash_attn2,
                                          low_vram=low_vram, awq_dequant_rows=settings.awq_dequant_rows)
        compiled = settings.compiled_decode and can.compiled_decode and not low_vram
        if settings.compiled_decode and can.compiled_decode and low_vram:
            log.warning("--compiled-decode does not apply in low-VRAM mode: generating on the default (eager) path")
        # The aligner loads later, on first use: the batch size leaves room for its weights.
        batch_size = settings.batch_size or engine.suggest_batch_size(
            settings.segment_duration, settings.max_new_tokens, compiled=compiled, reserve_bytes=aligner.prepare())
        log.info("generating up to %d segments per batch", batch_size)

        def compile_decode() -> None:
            try:
                engine.compile_decode(batch_size, settings.segment_duration, settings.max_new_tokens,
                                      cache_dir=settings.data_dir / "compile-cache")
            except Exception:  # a compiler that fails here (a missing toolchain, memory) must not cost the model
                log.exception("compiled decode failed at load: generating on the default (eager) path")

        prepare = compile_decode if compiled else None
        return BatchRunner(engine, batch_size, scheduler, prepare=prepare, aligner=aligner)

    return load


def close_runner(runner: BatchRunner) -> None:
    runner.close()


class LocalDestination:
    """Segments go to this process's model."""

    def __init__(self, models: ModelManager[BatchRunner], scheduler: FairScheduler) -> None:
        self.models = models
        self.scheduler = scheduler

    def open_lane(self, job_id: str, *, waiting_client: bool) -> _LocalLane:
        return _LocalLane(self, self.scheduler.open_flow(job_id, waiting_client=waiting_client))


class _LocalLane:
    def __init__(self, destination: LocalDestination, flow: Flow) -> None:
        self._destination = destination
        self._flow = flow
        self._held = ExitStack()
        self._runner: BatchRunner | None = None

    def submit(self, segment: Segment, options: GenerationOptions) -> Future[SegmentResult]:
        if self._runner is None:
            self._runner = self._held.enter_context(self._destination.models.use())
        return self._destination.scheduler.submit(self._flow, segment.samples, options, start=segment.start,
                                                  end=segment.end).future

    def lookahead(self) -> int:
        return self._destination.scheduler.lookahead(self._runner.batch_size if self._runner else 1)

    def close(self) -> None:
        self._destination.scheduler.close_flow(self._flow)
        self._held.close()

