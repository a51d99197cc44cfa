"""Qwen3-ASR (``Qwen/Qwen3-ASR-1.7B-hf``, ``-0.6B-hf``) as a speech recogniser: the same engine interface as
the Qwen2.5-Omni thinker (:mod:`serve.engines`), so that everything above it (batch runner, pipeline, jobs,
routes, scale-out) runs it unchanged.

Inputs are built by the model's own processor (``apply_transcription_request``): the context prompt in the
system turn, the language forced by prefilling ``language <Name><asr_text>`` (or left to the model, which
then names the language it heard), and the answer parsed by ``decode(..., return_format="parsed")`` with
the model authors' repetition fix. Up to 1,200 s of audio per call.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, LogitsProcessorList, Qwen3ASRForConditionalGeneration
from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

from ..generation import GenerationOptions, SegmentResult
from . import QWEN3_ASR, EngineLoadError
from .runtime import (
    batch_size_for,
    generation_config,
    out_of_memory_after_release,
    pick_attention,
    pick_device,
    pick_dtype,
    refuse_what_it_cannot_do,
    weights_bytes,
)
from .token_scores import TokenScores, row_scores

log = logging.getLogger(__name__)

MAX_SECONDS = 1200.0  # the published limit per call
_NAME_TO_CODE = {name.lower(): code for code, name in LANGUAGE_CODE_TO_NAME.items()}
TEXT_MARKER = "<asr_text>"  # what ends the "language X" the model writes before the text


def _after(row: list[int], marker: int | None) -> int:
    """Where the text begins in a generated row: after its first ``marker``, else at 0."""
    return row.index(marker) + 1 if marker is not None and marker in row else 0


class Qwen3AsrEngine:
    """Transcribes 16 kHz mono audio with a Qwen3-ASR checkpoint. One instance owns the model."""

    def __init__(self, model: Any, processor: Any, *, checkpoint: Path, load_seconds: float) -> None:
        self.model = model
        self.processor = processor
        self.checkpoint = checkpoint
        self.load_seconds = load_seconds
        self._lock = threading.Lock()
        generation = model.generation_config
        ends = generation.eos_token_id
        self._stop_ids = list(ends) if isinstance(ends, list | tuple) else [ends]
        self._pad_id = generation.pad_token_id if generation.pad_token_id is not None else self._stop_ids[0]
        # Rows of a batch are left-padded: each generates from where its own prompt ends.
        processor.tokenizer.padding_side = "left"
        self._text_marker = processor.tokenizer.convert_tokens_to_ids(TEXT_MARKER)

    @classmethod
    def load(cls, checkpoint: Path, *, device: str = "auto", flash_attn2: bool = False, low_vram: bool = False,
             awq_dequant_rows: int = -1) -> Qwen3AsrEngine:
        """Load a Qwen3-ASR checkpoint in the published ``-hf`` layout (``low_vram`` and ``awq_dequant_rows``,
        the Omni engine's, do not apply: its capabilities say so, and the loader warns)."""
        started = time.monotonic()
        checkpoint = Path(checkpoint)
        torch_device = pick_device(device)
        dtype = pick_dtype(torch_device)
        try:
            model, info = Qwen3ASRForConditionalGeneration.from_pretrained(
                checkpoint, dtype=dtype, device_map={"": torch_device}, local_files_only=True,
                attn_implementation=pick_attention(flash_attn2, torch_device, dtype), output_loading_info=True)
            processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EngineLoadError(f"loading Qwen3-ASR from {checkpoint} failed: {exc}") from exc
        missing = sorted(info.get("missing_keys", ()))
        if missing:
            # The original (not -hf) layout keeps its weights under thinker.*: loaded as is, they would be random.
            raise EngineLoadError(f"{checkpoint} lacks {len(missing)} Qwen3-ASR weights (e.g. {missing[:2]}): use the "
                                  "transformers (-hf) checkpoint, e.g. Qwen/Qwen3-ASR-1.7B-hf")
        model.eval()
        engine = cls(model, processor, checkpoint=checkpoint, load_seconds=time.monotonic() - started)
        log.info("loaded %s (Qwen3-ASR, %s, %s) in %.1f s", checkpoint, torch_device, str(dtype).split(".")[-1],
                 engine.load_seconds)
        return engine

    @property
    def device(self) -> torch.device:
        return self.model.device

    def memory_bytes(self) -> int:
        return weights_bytes(self.model)

    def transcribe_batch(self, batch: list[np.ndarray], options: GenerationOptions) -> list[str]:
        return [result.parts[0] for result in self.generate_batch(batch, options)]

    def generate_batch(self, batch: list[np.ndarray], options: GenerationOptions) -> list[SegmentResult]:
        """Several segments generated together: the transcript of each, the language the model named (when
        the request named none), the generated ids and their scores."""
        clips = [np.asarray(samples, dtype=np.float32) for samples in batch]
        refuse_what_it_cannot_do(QWEN3_ASR.capabilities, clips, options)
        forced = None if options.language == "auto" else options.language
        inputs = self.processor.apply_transcription_request(
            audio=clips, language=[forced] * len(clips), prompt=[options.prompt or None] * len(clips),
            padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        prompt_tokens = inputs["input_ids"].shape[1]
        config = generation_config(options, self._stop_ids, self._pad_id, max_new_tokens=options.max_new_tokens)
        out_of_memory = None
        try:
            with self._lock, torch.inference_mode():
                scores = TokenScores(self._stop_ids)
                generated = self.model.generate(**inputs, generation_config=config,
                                                logits_processor=LogitsProcessorList([scores]))[:, prompt_tokens:]
                # Without a forced language the model writes "language X<asr_text>" first: the text, its
                # scores and the chance that it is silence start after that.
                starts = [_after(row, self._text_marker) for row in generated.tolist()] if forced is None else None
                rows = row_scores(generated, scores.log_probs(generated), scores.end_at_once, self._stop_ids,
                                  starts=starts, end_probs=scores.end_probs())
        except torch.OutOfMemoryError as exc:
            out_of_memory = str(exc).splitlines()[0] if str(exc) else "out of memory"
        if out_of_memory is not None:
            del inputs
            raise out_of_memory_after_release(out_of_memory)
        results = []
        for row_ids, row in zip(generated, rows, strict=True):
            parsed = self.processor.decode(row_ids, return_format="parsed")
            heard = _NAME_TO_CODE.get(str(parsed["language"]).lower()) if parsed["language"] else None
            results.append(SegmentResult(parts=(parsed["transcription"],), tokens=tuple(row.tokens),
                                         avg_logprob=row.avg_logprob, no_speech_prob=row.no_speech_prob,
                                         language=forced or heard))
        return results

    def suggest_batch_size(self, segment_seconds: float, max_new_tokens: int, limit: int = 16, *,
                           compiled: bool = False, reserve_bytes: int = 0) -> int:
        """As many segments as fit in the free accelerator memory (1 on CPU): per segment the KV cache of its
        audio tokens (13 per second) and a transcript of up to 8 tokens per second, with 50% headroom."""
        tokens = 13 * segment_seconds + 64 + min(max_new_tokens, 8 * segment_seconds)
        return batch_size_for(self.model, self.device, tokens, limit, reserve_bytes)

    def compile_decode(self, batch_size: int, segment_seconds: float, max_new_tokens: int, *,
                       cache_dir: Path | None = None) -> float:
        return 0.0  # none: it generates on the default path (its capabilities say so)

    def close(self) -> None:
        with self._lock:
            self.model = None
            self.processor = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
