"""Qwen3-ASR behind the engine interface, on a tiny random checkpoint in the published -hf layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

from serve.config import Settings
from serve.engine import QwenOmniEngine
from serve.errors import InvalidParameter
from serve.generation import GenerationOptions
from serve.language_id import openai_name
from serve.languages import LANGUAGES, QWEN3_ASR_LANGUAGES, QWEN3_ASR_OTHER_LANGUAGES
from serve.local import engine_class
from serve.params import parse_params
from serve.qwen3_asr import Qwen3AsrEngine, _after

GREEDY = GenerationOptions(max_new_tokens=10, temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_asr: Path) -> Qwen3AsrEngine:
    engine = engine_class(tiny_asr).load(tiny_asr, device="cpu")
    yield engine
    engine.close()


def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [(0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32) for seconds in (2, 4.5, 3)]


def test_the_checkpoint_picks_the_engine(tiny_asr: Path, tiny_checkpoint: Path, tiny_aligner: Path) -> None:
    assert engine_class(tiny_asr) is Qwen3AsrEngine
    assert engine_class(tiny_checkpoint) is QwenOmniEngine
    assert engine_class(tiny_aligner) is QwenOmniEngine  # same config class, not an ASR model: Omni's loader refuses


def test_the_language_list_is_the_processor_s() -> None:
    assert {code for code in LANGUAGES if code in LANGUAGE_CODE_TO_NAME} == QWEN3_ASR_LANGUAGES
    others = {code: name for code, name in LANGUAGE_CODE_TO_NAME.items() if code not in LANGUAGES}
    assert others == QWEN3_ASR_OTHER_LANGUAGES
    assert openai_name("da") == "danish" and openai_name("xx") == "unknown"


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
    with pytest.raises(InvalidParameter, match="does not transcribe Ukrainian"):
        parse_params({"language": "uk"}, settings)
    assert parse_params({"language": "de"}, settings).language == "de"
    assert parse_params({"language": "uk"}, Settings(models_dir=tmp_path / "Qwen")).language == "uk"  # Omni's
    # Greedy without a repetition penalty, as its generation config says, unless the server says otherwise.
    params = parse_params({}, settings)
    assert (params.temperature, params.repetition_penalty) == (0.0, 1.0)
    own = Settings(checkpoint_path="Qwen/Qwen3-ASR-tiny", models_dir=tmp_path / "Qwen", temperature=0.3)
    assert (parse_params({}, own).temperature, parse_params({}, own).repetition_penalty) == (0.3, 1.0)
    omni = parse_params({}, Settings(models_dir=tmp_path / "Qwen"))
    assert (omni.temperature, omni.repetition_penalty) == (0.1, 1.1)  # the guide's


def test_the_engine_refuses_a_language_it_lacks_as_a_client_error(engine: Qwen3AsrEngine) -> None:
    # The server's check happens before the model is loaded; where it could not tell (a checkpoint not yet
    # downloaded), the engine's refusal still reaches the client as a 400, not a failed transcription.
    from serve.errors import failure_of

    with pytest.raises(InvalidParameter) as refused:
        engine.generate_batch(clips()[:1], GenerationOptions(max_new_tokens=4, language="uk"))
    assert failure_of(refused.value).http_status == 400
