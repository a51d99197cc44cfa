"""Qwen3-ASR behind the engine interface, on a tiny random checkpoint in the published -hf layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

from serve.config import Settings
from serve.engines import spec_for_checkpoint
from serve.engines.qwen3_asr import Qwen3AsrEngine, _after
from serve.errors import InvalidParameter
from serve.generation import GenerationOptions
from serve.language_id import openai_name
from serve.languages import QWEN3_ASR_LANGUAGES, QWEN3_ASR_OTHER_LANGUAGES
from serve.params import parse_params

GREEDY = GenerationOptions(max_new_tokens=10, temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_asr: Path) -> Qwen3AsrEngine:
    engine = spec_for_checkpoint(tiny_asr).engine_class().load(tiny_asr, device="cpu")
    yield engine
    engine.close()


def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [(0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32) for seconds in (2, 4.5, 3)]


def test_the_language_list_is_the_processor_s() -> None:
    assert set(LANGUAGE_CODE_TO_NAME) == QWEN3_ASR_LANGUAGES
    assert all(LANGUAGE_CODE_TO_NAME[code] == name for code, name in QWEN3_ASR_OTHER_LANGUAGES.items())
    assert openai_name("da") == "danish" and openai_name("xx") == "unknown"


def test_a_language_only_qwen3_asr_takes_reaches_the_model(engine: Qwen3AsrEngine) -> None:
    danish = GenerationOptions(max_new_tokens=4, temperature=0.0, language="da")
    assert engine.generate_batch(clips()[:1], danish)[0].language == "da"
    prompt = engine.processor.apply_transcription_request(audio=clips()[:1], language=["da"], tokenize=False)[0]
    assert prompt.endswith("language Danish<asr_text>")


def test_the_language_the_model_names_is_parsed_and_its_prefix_is_not_scored(engine: Qwen3AsrEngine) -> None:
    tokenizer = engine.processor.tokenizer
    ids = tokenizer.encode("language German<asr_text>hallo welt")
    parsed = engine.processor.decode(ids, return_format="parsed")
    assert parsed == {"language": "German", "transcription": "hallo welt"}  # the marker is text, not special
    assert _after(ids, engine._text_marker) == ids.index(engine._text_marker) + 1
    auto = engine.generate_batch(clips()[:1], GREEDY)[0]
    assert engine._text_marker not in auto.tokens


def test_a_batch_equals_each_segment_alone(engine: Qwen3AsrEngine) -> None:
    batch = engine.generate_batch(clips(), GREEDY)
    alone = [engine.generate_batch([clip], GREEDY)[0] for clip in clips()]
    assert [(r.parts, r.tokens) for r in batch] == [(r.parts, r.tokens) for r in alone]
    assert all(r.avg_logprob <= 0 and 0 <= r.no_speech_prob <= 1 for r in batch)


def test_a_forced_language_and_a_context_prompt_reach_the_model(engine: Qwen3AsrEngine) -> None:
    forced = GenerationOptions(max_new_tokens=6, temperature=0.0, language="zh", prompt="Qwen, 通义")
    result = engine.generate_batch(clips()[:1], forced)[0]
    assert result.language == "zh"  # forced: the model writes the text only, in that language
    prompt = engine.processor.apply_transcription_request(audio=clips()[:1], language=["zh"], prompt=["Qwen, 通义"],
                                                          tokenize=False)[0]
    assert prompt.startswith("<|im_start|>system\nQwen, 通义<|im_end|>")
    assert prompt.endswith("language Chinese<asr_text>")
    assert engine.generate_batch(clips()[:1], forced)[0].tokens != engine.generate_batch(clips()[:1], GREEDY)[0].tokens


def test_a_language_qwen3_asr_lacks_is_a_400(tiny_asr: Path, tmp_path: Path) -> None:
    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "Qwen3-ASR-tiny").symlink_to(tiny_asr)
    settings = Settings(checkpoint_path="Qwen/Qwen3-ASR-tiny", models_dir=tmp_path / "Qwen")
    with pytest.raises(InvalidParameter, match=r"Qwen3-ASR, does not take Ukrainian \(uk\)"):
        parse_params({"language": "uk"}, settings)
    assert parse_params({"language": "de"}, settings).language == "de"
    assert parse_params({"language": "fil"}, settings).language == "fil"  # one Qwen2.5-Omni is not asked for
    omni_settings = Settings(models_dir=tmp_path / "Qwen")
    assert parse_params({"language": "uk"}, omni_settings).language == "uk"  # Omni's
    with pytest.raises(InvalidParameter, match=r"Qwen2.5-Omni, does not take Filipino"):
        parse_params({"language": "fil"}, omni_settings)
    # Greedy without a repetition penalty, as its generation config says, unless the server says otherwise.
    params = parse_params({}, settings)
    assert (params.temperature, params.repetition_penalty) == (0.0, 1.0)
    own = Settings(checkpoint_path="Qwen/Qwen3-ASR-tiny", models_dir=tmp_path / "Qwen", temperature=0.3)
    assert (parse_params({}, own).temperature, parse_params({}, own).repetition_penalty) == (0.3, 1.0)
    omni = parse_params({}, omni_settings)
    assert (omni.temperature, omni.repetition_penalty) == (0.1, 1.1)  # the guide's


def test_the_engine_refuses_a_language_it_lacks_as_a_client_error(engine: Qwen3AsrEngine) -> None:
    # The server's check happens before the model is loaded; where it could not tell (a checkpoint not yet
    # downloaded), the engine's refusal still reaches the client as a 400, not a failed transcription.
    from serve.errors import failure_of

    with pytest.raises(InvalidParameter) as refused:
        engine.generate_batch(clips()[:1], GenerationOptions(max_new_tokens=4, language="uk"))
    assert failure_of(refused.value).http_status == 400


def test_translation_is_refused_by_the_server_and_by_the_engine(engine: Qwen3AsrEngine, tiny_asr: Path,
                                                                tmp_path: Path) -> None:
    from serve.errors import failure_of

    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "Qwen3-ASR-tiny").symlink_to(tiny_asr)
    settings = Settings(checkpoint_path="Qwen/Qwen3-ASR-tiny", models_dir=tmp_path / "Qwen")
    with pytest.raises(InvalidParameter, match="Qwen3-ASR, transcribes only and cannot translate") as refused:
        parse_params({"task": "translate"}, settings)
    assert refused.value.param == "task"
    with pytest.raises(InvalidParameter, match="cannot translate") as refused:
        engine.generate_batch(clips()[:1], GenerationOptions(max_new_tokens=4, target_language="en"))
    assert failure_of(refused.value).http_status == 400


def test_segments_up_to_its_limit(tiny_asr: Path, tmp_path: Path, engine: Qwen3AsrEngine) -> None:
    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "Qwen3-ASR-tiny").symlink_to(tiny_asr)
    settings = Settings(checkpoint_path="Qwen/Qwen3-ASR-tiny", models_dir=tmp_path / "Qwen")
    assert parse_params({"segment_duration": "1200"}, settings).segment_duration == 1200
    with pytest.raises(InvalidParameter, match="segment_duration"):
        parse_params({"segment_duration": "1201"}, settings)
    with pytest.raises(InvalidParameter, match="segment_duration"):
        parse_params({"segment_duration": "600"}, Settings(models_dir=tmp_path / "Qwen"))  # Omni: 290 s
    # A segment past Qwen2.5-Omni's 300 s reaches the model whole: the processor does not truncate it.
    rng = np.random.default_rng(5)
    long_clip = (0.1 * rng.standard_normal(16000 * 400)).astype(np.float32)
    inputs = engine.processor.apply_transcription_request(audio=[long_clip], return_tensors="pt")
    assert inputs["input_features"].shape[-1] >= 400 * 100  # 100 mel frames a second
    assert engine.generate_batch([long_clip], GenerationOptions(max_new_tokens=3, temperature=0.0))[0].tokens
