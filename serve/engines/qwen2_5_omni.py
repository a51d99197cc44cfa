"""The Qwen2.5-Omni thinker as a speech recogniser: load (bf16/fp16 or AWQ), build inputs, generate, decode.

Only the thinker is loaded from the full Omni checkpoint, and without its vision tower: the talker and
token2wav (speech output) and the image encoder are never allocated. Inputs are built from the tokenizer
and the Whisper feature extractor, so neither torchvision nor qwen-omni-utils is needed. This module knows
nothing about HTTP, jobs or files other than the checkpoint.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    Qwen2_5OmniThinkerForConditionalGeneration,
    WhisperFeatureExtractor,
)
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from ..audio import SAMPLE_RATE
from ..generation import DEFAULT_INSTRUCTION, SYSTEM_PROMPT, GenerationOptions, SegmentResult, system_prompt_for
from . import QWEN2_5_OMNI, EngineLoadError, awq, compiled_decode
from . import low_vram as low_vram_mode
from .compiled_decode import CompiledDecoder, DecodePlan, batch_buckets
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

AUDIO_TOKEN = "<|AUDIO|>"
END_OF_TURN_TOKEN = "<|im_end|>"
END_OF_TEXT_TOKEN = "<|endoftext|>"


def audio_token_count(mel_frames: int) -> int:
    """Tokens the audio encoder emits for ``mel_frames`` (its two stride-2 stages, as the processor computes)."""
    after_conv = (mel_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def _quantization_dict(config: Any) -> dict[str, Any] | None:
    value = getattr(config, "quantization_config", None)
    if value is None:
        return None
    return value if isinstance(value, dict) else value.to_dict()


def _load_chat_template(checkpoint: Path, tokenizer: Any) -> str:
    """The processor's chat template (chat_template.json), else the tokenizer's."""
    path = checkpoint / "chat_template.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["chat_template"]
    if tokenizer.chat_template:
        return tokenizer.chat_template
    raise EngineLoadError("the checkpoint has no chat template (chat_template.json or tokenizer_config.json)")


class AudioOnlyThinker(Qwen2_5OmniThinkerForConditionalGeneration):
    """The Qwen2.5-Omni thinker without its vision tower (about 670 M parameters that transcription never uses).

    The tower is dropped while the model is still an empty skeleton, so its weights are never read or
    allocated; the checkpoint's ``thinker.visual.*`` tensors are skipped.
    """

    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^model\.visual\.", r"^visual\.", r"^talker",
                                                                r"^token2wav"]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model.visual = None

    @property
    def device(self) -> torch.device:
        # Where generation runs. The parent class reports its first parameter's device, the audio encoder's,
        # which low-VRAM mode keeps off the GPU.
        return self.lm_head.weight.device

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        if not kwargs.get("is_first_iteration") and kwargs.get("use_cache", True):
            # A decode step: the audio is in the KV cache already. transformers forwards the features' mask all
            # the same, and in a compiled decode step every audio length would be a new shape to compile.
            inputs.pop("feature_attention_mask", None)
        return inputs

    @classmethod
    def register_weight_names(cls) -> None:
        """Load published checkpoints with the parent class's key renames (they are looked up by class name)."""
        parent = Qwen2_5OmniThinkerForConditionalGeneration.__name__
        register_checkpoint_conversion_mapping(cls.__name__, get_checkpoint_conversion_mapping(parent),
                                               overwrite=True)


class QwenOmniEngine:
    """Transcribes 16 kHz mono audio with the Qwen2.5-Omni thinker. One instance owns the model."""

    def __init__(self, model: Any, tokenizer: Any, feature_extractor: WhisperFeatureExtractor,
                 chat_template: str, *, checkpoint: Path, quantized: bool, load_seconds: float,
                 low_vram: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.checkpoint = checkpoint
        self.quantized = quantized
        self.load_seconds = load_seconds
        self.low_vram = low_vram
        # Held for each generate call: one request at a time uses the model (and, in low-VRAM mode, the
        # modules whose weights move between CPU and GPU).
        self._lock = threading.Lock()
        ids = tokenizer.convert_tokens_to_ids([AUDIO_TOKEN, END_OF_TURN_TOKEN, END_OF_TEXT_TOKEN])
        if None in ids or tokenizer.unk_token_id in ids:
            raise EngineLoadError("the tokenizer lacks Qwen2.5-Omni's special tokens")
        audio_id, end_of_turn_id, end_of_text_id = ids
        if audio_id != model.config.audio_token_id:
            raise EngineLoadError(f"tokenizer's {AUDIO_TOKEN} id {audio_id} differs from the model config's "
                                  f"{model.config.audio_token_id}")
        # The published generation_config.json names no end token for the thinker: without these,
        # every segment would run to max_new_tokens (QwenLM/Qwen2.5-Omni#371).
        self._stop_ids = [end_of_turn_id, end_of_text_id]
        self._pad_id = end_of_text_id
        # What ends a row of the compiled pass for good: its end tokens, or a degenerate audio placeholder
        # (the eager continuation would look for audio features for it).
        self._no_continuation_ids = [*self._stop_ids, audio_id, *(
            [model.config.audio_start_token_id] if getattr(model.config, "audio_start_token_id", None) else [])]
        self._max_positions = model.config.text_config.max_position_embeddings
        self._chat_template = chat_template
        self._prompts: dict[tuple[str, str], str] = {}
        self._prompt = self.prompt_for(DEFAULT_INSTRUCTION)  # also checks the template once, at load
        self.compiled: CompiledDecoder | None = None  # set by compile_decode()

    @classmethod
    def load(cls, checkpoint: Path, *, device: str = "auto", flash_attn2: bool = False,
             low_vram: bool = False, awq_dequant_rows: int = -1) -> QwenOmniEngine:
        """Load the thinker of a full Qwen2.5-Omni checkpoint (or a thinker-only one) from a local folder.

        ``low_vram``: keep the audio encoder and token embeddings in CPU memory (:mod:`serve.engines.low_vram`).
        ``awq_dequant_rows``: AWQ layers run inputs of at least this many rows on their dequantised weight
        (0: never; -1: :func:`awq.default_dequant_rows` for the device).
        """
        started = time.monotonic()
        checkpoint = Path(checkpoint)
        torch_device = pick_device(device)
        dtype = pick_dtype(torch_device)
        try:
            config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EngineLoadError(f"cannot read {checkpoint / 'config.json'}: {exc}") from exc
        if config.model_type == "qwen2_5_omni":
            thinker_config = config.thinker_config
        elif config.model_type == "qwen2_5_omni_thinker":
            thinker_config = config
        else:
            raise EngineLoadError(f"not a Qwen2.5-Omni checkpoint (model_type {config.model_type!r})")
        quantization = _quantization_dict(config) or _quantization_dict(thinker_config)
        if quantization:
            awq.register()
            try:
                thinker_config.quantization_config = awq.OmniAwqConfig.from_checkpoint(quantization)
            except awq.AwqCheckpointError as exc:
                raise EngineLoadError(str(exc)) from exc
        attention = pick_attention(flash_attn2, torch_device, dtype)
        try:
            AudioOnlyThinker.register_weight_names()
            model, info = AudioOnlyThinker.from_pretrained(
                checkpoint,
                config=thinker_config,
                dtype=dtype,
                device_map=low_vram_mode.device_map(torch_device) if low_vram else {"": torch_device},
                attn_implementation=attention,
                local_files_only=True,
                output_loading_info=True,
            )
        except (OSError, ValueError, RuntimeError, awq.AwqCheckpointError) as exc:
            raise EngineLoadError(f"loading the thinker failed: {exc}") from exc
        if quantization:
            try:
                awq.check_loading_info(info)
            except awq.AwqCheckpointError as exc:
                raise EngineLoadError(str(exc)) from exc
        missing = sorted(info.get("missing_keys", ()))
        if missing:
            raise EngineLoadError(f"the checkpoint lacks {len(missing)} thinker weights, e.g. {missing[:3]}")
        if low_vram:
            if torch_device.type == "cpu":
                log.warning("--low-vram has no effect on the CPU: the model is in CPU memory already")
            try:
                low_vram_mode.finish(model, torch_device)
            except ValueError as exc:
                raise EngineLoadError(f"low-VRAM mode: {exc}") from exc
        if awq_dequant_rows < 0:
            awq_dequant_rows = awq.default_dequant_rows(torch_device)
        if quantization and awq_dequant_rows:
            layers = awq.set_dequant_rows(model, awq_dequant_rows)
            log.info("AWQ: %d layers dequantise for inputs of %d rows or more", layers, awq_dequant_rows)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(checkpoint, local_files_only=True)
        engine = cls(model, tokenizer, feature_extractor, _load_chat_template(checkpoint, tokenizer),
                     checkpoint=checkpoint, quantized=bool(quantization),
                     load_seconds=time.monotonic() - started, low_vram=low_vram)
        log.info("loaded %s (%s, %s, %s attention%s%s) in %.1f s", checkpoint, torch_device,
                 str(dtype).split(".")[-1], attention, ", AWQ 4-bit decoder" if quantization else "",
                 ", low-VRAM mode" if low_vram else "", engine.load_seconds)
        return engine

    @property
    def device(self) -> torch.device:
        return self.model.device

    def memory_bytes(self) -> int:
        return weights_bytes(self.model)

    def prompt_for(self, instruction: str, system_prompt: str = SYSTEM_PROMPT) -> str:
        """The chat-template rendering of the turn for ``instruction`` (with one audio placeholder), under the
        recognition (or translation) system prompt."""
        prompt = self._prompts.get((system_prompt, instruction))
        if prompt is None:
            messages = [
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": [{"type": "text", "text": instruction}, {"type": "audio"}]},
            ]
            prompt = self.tokenizer.apply_chat_template(messages, chat_template=self._chat_template,
                                                        tokenize=False, add_generation_prompt=True)
            if prompt.count(AUDIO_TOKEN) != 1:
                raise EngineLoadError("the chat template does not render exactly one audio placeholder")
            if len(self._prompts) < 256:  # a few languages x prompts; do not grow without bound
                self._prompts[system_prompt, instruction] = prompt
        return prompt

    def _features(self, samples: np.ndarray) -> torch.Tensor:
        """Log-mel features [1, mels, frames], equal to what the model authors' processor feeds the model.

        The processor pads every clip with zeros to 300 s and masks the padding; computing only the clip
        plus half an FFT window of zeros gives the same frames (the last one included) at a fraction of
        the cost.
        """
        extractor = self.feature_extractor
        frames = -(-len(samples) // extractor.hop_length)  # the processor's feature_attention_mask length
        padded = np.pad(samples, (0, extractor.n_fft // 2))
        features = extractor([padded], sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="pt")
        return features["input_features"][:, :, :frames]

    def _inputs(self, batch: list[np.ndarray], instruction: str = DEFAULT_INSTRUCTION,
                system_prompt: str = SYSTEM_PROMPT) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of clips: prompts left-padded, features right-padded and masked."""
        features = [self._features(samples)[0] for samples in batch]
        frames = [f.shape[-1] for f in features]
        longest = max(frames)
        input_features = torch.zeros(len(batch), features[0].shape[0], longest)
        feature_mask = torch.zeros(len(batch), longest, dtype=torch.long)
        for i, f in enumerate(features):
            input_features[i, :, : f.shape[-1]] = f
            feature_mask[i, : f.shape[-1]] = 1
        template = self.prompt_for(instruction, system_prompt)
        prompts = [template.replace(AUDIO_TOKEN, AUDIO_TOKEN * audio_token_count(n)) for n in frames]
        tokens = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        device = self.device
        return {
            "input_ids": tokens["input_ids"].to(device),
            "attention_mask": tokens["attention_mask"].to(device),
            "input_features": input_features.to(device, self.model.dtype),
            "feature_attention_mask": feature_mask.to(device),
        }

    def _generation_config(self, options: GenerationOptions, prompt_tokens: int) -> GenerationConfig:
        room = self._max_positions - prompt_tokens
        if room < 1:
            raise ValueError("the audio segment is too long for the model's context")
        return generation_config(options, self._stop_ids, self._pad_id,
                                 max_new_tokens=min(options.max_new_tokens, room))

    def transcribe(self, samples: np.ndarray, options: GenerationOptions) -> str:
        """The raw transcript of one segment of 16 kHz mono float32 audio."""
        return self.transcribe_batch([samples], options)[0]

    def transcribe_batch(self, batch: list[np.ndarray], options: GenerationOptions) -> list[str]:
        """Raw transcripts of several segments, generated together (each stops at its own end token)."""
        return [result.parts[0] for result in self.generate_batch(batch, options)]

    def generate_batch(self, batch: list[np.ndarray], options: GenerationOptions) -> list[SegmentResult]:
        """Several segments generated together (each stops at its own end token): the raw text of each,
        with its token ids and their scores (:mod:`serve.engines.token_scores`)."""
        clips = [np.asarray(samples, dtype=np.float32) for samples in batch]
        refuse_what_it_cannot_do(QWEN2_5_OMNI.capabilities, clips, options)
        with torch.inference_mode():  # inference tensors throughout: a compiled step guards on that too
            inputs = self._inputs(clips, options.instruction, system_prompt_for(options))
        prompt_tokens = inputs["input_ids"].shape[1]
        generation_config = self._generation_config(options, prompt_tokens)
        out_of_memory = None
        try:
            with self._lock, torch.inference_mode():
                plan = None
                if self.compiled is not None:
                    seconds = max(len(clip) for clip in clips) / SAMPLE_RATE
                    plan = self.compiled.plan(len(clips), prompt_tokens, seconds, generation_config.max_new_tokens)
                if plan is None:
                    scores = TokenScores(self._stop_ids)
                    generated = self.model.generate(**inputs, generation_config=generation_config,
                                                    logits_processor=LogitsProcessorList([scores]))[:, prompt_tokens:]
                    log_probs, end_at_once = scores.log_probs(generated), scores.end_at_once
                else:
                    generated, log_probs, end_at_once = self._generate_compiled(inputs, generation_config, plan)
                rows = row_scores(generated, log_probs, end_at_once, self._stop_ids)
        except torch.OutOfMemoryError as exc:
            out_of_memory = str(exc).splitlines()[0] if str(exc) else "out of memory"
        if out_of_memory is not None:
            del inputs
            raise out_of_memory_after_release(out_of_memory)
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [SegmentResult(parts=(text,), tokens=tuple(row.tokens), avg_logprob=row.avg_logprob,
                              no_speech_prob=row.no_speech_prob) for text, row in zip(texts, rows, strict=True)]

    def _generate_compiled(self, inputs: dict[str, torch.Tensor], generation_config: GenerationConfig,
                           plan: DecodePlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generated tokens [rows, n] from the compiled pass, and for rows that spent its budget without
        ending (and may go on), from an eager continuation; rows end in padding as ``generate`` pads them.
        With them, each token's log-probability [rows, n] and each row's probability of ending at once."""
        rows, prompt_tokens = inputs["input_ids"].shape
        padded = {name: _pad_rows(tensor, plan.batch) for name, tensor in inputs.items()}
        config = copy.deepcopy(generation_config)
        config.update(**self.compiled.settings(), max_new_tokens=min(generation_config.max_new_tokens,
                                                                     plan.new_tokens))
        scores = TokenScores(self._stop_ids)
        output = self.model.generate(**padded, past_key_values=self.compiled.cache_for(plan),
                                     generation_config=config, logits_processor=LogitsProcessorList([scores]))
        # Scored over the padded rows the graph ran, then cut to the real ones.
        log_probs, end_at_once = scores.log_probs(output[:, prompt_tokens:])[:rows], scores.end_at_once[:rows]
        output = output[:rows]
        del padded
        generated = output[:, prompt_tokens:]
        remaining = generation_config.max_new_tokens - generated.shape[1]
        ended = torch.isin(generated, torch.tensor(self._no_continuation_ids, device=generated.device)).any(dim=1)
        going_on = (~ended).nonzero().flatten()
        if remaining <= 0 or len(going_on) == 0:
            return generated, log_probs, end_at_once
        # The prompt and what the compiled pass generated become the continuation's prompt (its prefill
        # recomputes their cache); the repetition penalty sees the same tokens as on the eager path.
        more = {
            "input_ids": output[going_on],
            "attention_mask": torch.cat([inputs["attention_mask"][going_on],
                                         torch.ones_like(generated[going_on])], dim=1),
            "input_features": inputs["input_features"][going_on],
            "feature_attention_mask": inputs["feature_attention_mask"][going_on],
        }
        config = copy.deepcopy(generation_config)
        config.max_new_tokens = remaining
        more_scores = TokenScores(self._stop_ids)
        continued = self.model.generate(**more, generation_config=config,
                                        logits_processor=LogitsProcessorList([more_scores]))[:, output.shape[1]:]
        log.info("%d of %d rows spent the compiled budget of %d tokens and went on eagerly (%d more at most)",
                 len(going_on), rows, plan.new_tokens, remaining)
        tail = torch.full((rows, continued.shape[1]), self._pad_id, dtype=generated.dtype, device=generated.device)
        tail[going_on] = continued
        # Rows that did not go on were padded: their tail is not theirs to score (NaN is left out of the mean).
        tail_log_probs = torch.full((rows, continued.shape[1]), float("nan"), device=log_probs.device)
        tail_log_probs[going_on] = more_scores.log_probs(continued).to(log_probs.device)
        return torch.cat([generated, tail], dim=1), torch.cat([log_probs, tail_log_probs], dim=1), end_at_once

    def compile_decode(self, batch_size: int, segment_seconds: float, max_new_tokens: int, *,
                       cache_dir: Path | None = None) -> float:
        """Generate with a static cache and a compiled decode step from now on (:mod:`serve.engines.compiled_decode`),
        compiling at once the graphs of every batch bucket up to ``batch_size`` for segments of
        ``segment_seconds``, so that no request pays for compiling. Returns the warm-up's seconds.

        Call it on the thread that will generate (CUDA graphs belong to the thread that records them), and
        :meth:`close` on that thread too."""
        if self.low_vram:
            log.warning("compiled decode is off in low-VRAM mode: the CPU-held modules cannot be compiled")
            return 0.0
        started = time.monotonic()
        silence = np.zeros(int(segment_seconds * SAMPLE_RATE), dtype=np.float32)
        with torch.inference_mode():
            inputs = self._inputs([silence], DEFAULT_INSTRUCTION)
        prompt_tokens = inputs["input_ids"].shape[1]
        cache_len = compiled_decode.cache_length(prompt_tokens, segment_seconds, max_new_tokens)
        compiled = CompiledDecoder(self.model, batch_size=batch_size, cache_len=cache_len, cache_dir=cache_dir)
        config = self._generation_config(GenerationOptions(max_new_tokens=max_new_tokens, temperature=0.0),
                                         prompt_tokens)
        # A few decode steps per bucket: CUDA graph trees run a new graph once, then record it, then replay.
        config.update(**compiled.settings(), min_new_tokens=4, max_new_tokens=4)
        with self._lock, torch.inference_mode():
            try:
                for bucket in batch_buckets(batch_size):
                    plan = compiled.plan(bucket, prompt_tokens, segment_seconds, config.max_new_tokens)
                    warm = {name: _pad_rows(tensor, bucket) for name, tensor in inputs.items()}
                    self.model.generate(**warm, past_key_values=compiled.cache_for(plan), generation_config=config)
            except BaseException:
                compiled.release()  # what was compiled so far: the engine stays eager
                raise
            self.compiled = compiled
        seconds = time.monotonic() - started
        log.info("compiled decode ready for batches of %s (%d-position cache) in %.1f s",
                 "/".join(map(str, batch_buckets(batch_size))), cache_len, seconds)
        return seconds

    def suggest_batch_size(self, segment_seconds: float, max_new_tokens: int, limit: int = 16, *,
                           compiled: bool = False, reserve_bytes: int = 0) -> int:
        """How many segments fit in the free accelerator memory at once (1 on CPU, where batching buys little).

        Per segment: the KV cache of its audio tokens (25 per second), the prompt and a realistic transcript
        (about 8 tokens per second of audio, at most max_new_tokens), with 50% headroom, plus a fixed
        allowance for the audio encoder's activations. With ``compiled`` decode the cache is static: as long
        as the compiled pass's plan, allocated whole. ``reserve_bytes`` is left free for what loads later.
        """
        tokens = 25 * segment_seconds + 64 + min(max_new_tokens, 8 * segment_seconds)
        if compiled:
            tokens = compiled_decode.cache_length(int(25 * segment_seconds + 64), segment_seconds, max_new_tokens)
        # In low-VRAM mode the audio encoder visits the GPU one layer at a time: no room to set aside for it
        # (measured on an H200: the prefill adds no more than in the normal mode, benchmarks/README.md).
        return batch_size_for(self.model, self.device, tokens, limit, reserve_bytes)

    def close(self) -> None:
        """Drop every reference to the model (and its compiled graphs) so that its memory can be freed."""
        with self._lock:
            if self.compiled is not None:
                self.compiled.release()
                self.compiled = None
            self.model = None
            self.tokenizer = None
            self.feature_extractor = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with its last row repeated up to ``rows`` rows (a compiled graph's fixed batch)."""
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])], dim=0)
