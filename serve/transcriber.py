"""The transcription pipeline: decode -> segments -> scheduler -> model -> clean text pieces -> Transcript.

One pipeline for both modes. It runs on a job's thread: it decodes and cuts the file (streamed), skips
silence, and hands each segment to a *destination*, which transcribes it wherever the model is: this
process's batch runner (:mod:`serve.local`) or the scale-out workers (:mod:`serve.distributed.dispatch`).
Both put the segment into a :class:`~serve.scheduler.FairScheduler`, so every running job gets its share of
the model. The pipeline keeps at most the destination's look-ahead of segments outstanding (memory stays
flat), takes the results back in file order, cleans them, reports progress, and assembles the transcript.

A job can resume: cutting is deterministic (the same file always yields the same segments), so a run
given the segments already done and their pieces skips those segments and goes on from the next one;
the transcript equals an uninterrupted run's.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .audio import MIN_SEGMENT_SECONDS, Segment, decode_segments
from .generation import GenerationOptions, SegmentResult, instruction_for
from .text import clean_parts, to_traditional
from .transcript import Piece, Transcript
from .word_alignment import words_onto

log = logging.getLogger(__name__)

# segments done, total (an estimate), audio seconds done, and the segment's piece (None when it was silent)
ProgressCallback = Callable[[int, int | None, float, dict | None], None]

# How often a job waiting for its next segment's text checks whether it was cancelled.
STOP_POLL_SECONDS = 0.1


class TranscriptionStopped(Exception):
    """The caller asked to stop (a cancelled job)."""


class TranscriptionPaused(Exception):
    """The caller asked to pause: the segments already handed over were finished and reported, no more."""


@dataclass(frozen=True)
class ResumePoint:
    """Where an earlier run of the same job stopped: the segments it finished (in file order) and their pieces."""

    segments_done: int = 0
    pieces: tuple[Piece, ...] = ()


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
    align_words: bool = False  # time the words with the forced aligner
    word_timestamps: bool = False  # and show them (JSON words, word-level VTT): the request asked
    task: str = "transcribe"  # or "translate" (into target_language), where the engine can
    target_language: str | None = None

    @property
    def generation(self) -> GenerationOptions:
        return GenerationOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                 repetition_penalty=self.repetition_penalty,
                                 instruction=instruction_for(self.language, self.prompt, self.target_language),
                                 language=self.language, prompt=self.prompt,
                                 align=self.language if self.align_words else None,
                                 target_language=self.target_language)


class Lane(Protocol):
    """One job's way to the model."""

    def submit(self, segment: Segment, options: GenerationOptions) -> Future[SegmentResult]:
        """Queue a segment; its future gets the model path's result (raw text, scores, aligned words)."""

    def lookahead(self) -> int:
        """How many segments the job may have outstanding now."""

    def close(self) -> None:
        """The job is done: withdraw what it still has waiting, release what it holds."""


class Destination(Protocol):
    """Where segments are transcribed: this process's model, or the scale-out workers."""

    def open_lane(self, job_id: str, *, waiting_client: bool) -> Lane: ...


@dataclass
class _Outstanding:
    number: int  # 1-based position in the file
    segment: Segment
    future: Future[SegmentResult] | None  # None: silent, nothing to transcribe


class Transcriber:
    def __init__(self, destination: Destination, *, scratch_dir: Path | None = None) -> None:
        self.destination = destination
        self.scratch_dir = scratch_dir

    def __call__(self, audio_path: Path, params: TranscriptionParams, *, job_id: str | None = None,
                 waiting_client: bool = False, expected_duration: float | None = None,
                 progress: ProgressCallback | None = None,
                 should_stop: Callable[[], bool] | None = None, should_pause: Callable[[], bool] | None = None,
                 resume: ResumePoint | None = None) -> Transcript:
        """Transcribe ``audio_path``; ``should_stop`` aborts (TranscriptionStopped), ``should_pause`` lets the
        segments in flight finish first (TranscriptionPaused); ``resume`` goes on where an earlier run stopped."""
        total = estimated_segments(expected_duration, params.segment_duration) if expected_duration else None
        produced = 0  # segments the cutter has made so far
        resume = resume or ResumePoint()
        pieces: list[Piece] = list(resume.pieces)
        outstanding: deque[_Outstanding] = deque()
        duration = 0.0

        def stopped() -> bool:
            return should_stop is not None and should_stop()

        def finish_oldest() -> None:
            entry = outstanding.popleft()
            piece = None
            if entry.future is not None:
                piece = _piece(entry.segment, _wait(entry.future, stopped), params)
                log.debug("segment %d [%.2f-%.2f]: %r", entry.segment.index, entry.segment.start, entry.segment.end,
                          piece.text)
                pieces.append(piece)
            if progress is not None:
                progress(entry.number, max(total, entry.number) if total else None, entry.segment.cut_end,
                         piece.to_dict() if piece else None)

        def speech_outstanding() -> int:
            return sum(1 for entry in outstanding if entry.future is not None)

        lane = self.destination.open_lane(job_id or uuid.uuid4().hex, waiting_client=waiting_client)
        paused = False
        try:
            for number, segment in enumerate(decode_segments(audio_path, params.segment_duration, self.scratch_dir),
                                             start=1):
                duration = segment.cut_end
                produced = number
                if stopped():
                    raise TranscriptionStopped()
                if should_pause is not None and should_pause():
                    paused = True
                    break
                if number <= resume.segments_done:
                    continue  # done by an earlier run: its piece is in ``resume``
                if not segment.is_silent():
                    while speech_outstanding() >= lane.lookahead():
                        finish_oldest()
                # A silent segment never reaches the model (a silent file never loads it).
                future = None if segment.is_silent() else lane.submit(segment, params.generation)
                outstanding.append(_Outstanding(number, segment, future))
                while outstanding and (outstanding[0].future is None or outstanding[0].future.done()):
                    finish_oldest()  # report in file order as soon as possible
            while outstanding:
                finish_oldest()
            if paused:
                raise TranscriptionPaused()
            if progress is not None and produced and total != produced:
                # The estimate was off (a duration from the container, not the samples): a finished file
                # reports N of N.
                progress(produced, produced, duration, None)
        finally:
            for entry in outstanding:
                if entry.future is not None:
                    entry.future.cancel()
            lane.close()
        return Transcript(pieces=tuple(pieces), duration=duration)


def estimated_segments(duration: float, segment_seconds: float) -> int:
    """How many segments the cutter makes of ``duration`` seconds, at least: each is at most
    ``segment_seconds`` long (cuts in pauses can come earlier, never later), and a tail shorter than
    MIN_SEGMENT_SECONDS is dropped, so the estimate never exceeds the count."""
    return max(1, math.ceil((duration - MIN_SEGMENT_SECONDS) / segment_seconds))


def _wait(future: Future[SegmentResult], stopped: Callable[[], bool]) -> SegmentResult:
    while True:
        try:
            return future.result(timeout=STOP_POLL_SECONDS)
        except TimeoutError:
            if stopped():
                raise TranscriptionStopped() from None


def _piece(segment: Segment, result: SegmentResult, params: TranscriptionParams) -> Piece:
    """Post-processing: each part loses the model's wrappers and repetitions (and gets OpenCC), then they join;
    the aligned words move to the file's time line and, after OpenCC, onto the converted text."""
    text = clean_parts(result.parts, opencc=params.opencc)
    words = result.words
    if words is not None:
        # Times in the clip, which starts a little before the speech (its padding): onto the file's time line,
        # inside the segment's speech.
        words = tuple(word.shifted(segment.audio_start).within(segment.start, segment.end) for word in words)
        if params.opencc:
            opencc = params.opencc
            words = words_onto(clean_parts(result.parts), text, words, lambda t: to_traditional(t, opencc))
    return Piece(start=segment.start, end=segment.end, text=text, tokens=result.tokens,
                 avg_logprob=result.avg_logprob, no_speech_prob=result.no_speech_prob, words=words,
                 alignment_note=result.alignment_note, language=result.language)
