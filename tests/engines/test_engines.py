"""The engine registry: the checkpoint's config picks the engine, each engine declares what it can do, and
what reads the declarations (the HTTP layer, the scale-out API role) never imports torch."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from serve.engines import (
    ENGINES,
    QWEN2_5_OMNI,
    QWEN3_ASR,
    EngineLoadError,
    SpeechEngine,
    declared_spec,
    spec_for_checkpoint,
)
from tests.conftest import ROOT


def test_the_checkpoint_s_model_type_picks_the_engine(tiny_checkpoint: Path, tiny_awq_checkpoint: Path,
                                                       tiny_asr: Path) -> None:
    assert spec_for_checkpoint(tiny_checkpoint) is QWEN2_5_OMNI
    assert spec_for_checkpoint(tiny_awq_checkpoint) is QWEN2_5_OMNI
    assert spec_for_checkpoint(tiny_asr) is QWEN3_ASR
    assert spec_for_checkpoint(tiny_asr).engine_class().__name__ == "Qwen3AsrEngine"
    assert spec_for_checkpoint(tiny_checkpoint).engine_class().__name__ == "QwenOmniEngine"


def test_what_no_engine_runs_is_refused_with_a_reason(tiny_aligner: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError, match="--aligner-path"):  # Qwen3-ASR's model_type, not its recogniser
        spec_for_checkpoint(tiny_aligner)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(EngineLoadError, match=r"'whisper'.*qwen2_5_omni \(Qwen2.5-Omni\), qwen3_asr \(Qwen3-ASR\)"):
        spec_for_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(EngineLoadError, match="cannot read"):
        spec_for_checkpoint(tmp_path)


def test_the_declared_engine_is_read_without_loading_or_downloading(tiny_asr: Path, tmp_path: Path) -> None:
    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "Qwen3-ASR-tiny").symlink_to(tiny_asr)
    assert declared_spec("Qwen/Qwen3-ASR-tiny", tmp_path / "Qwen", tmp_path) is QWEN3_ASR
    assert declared_spec("Qwen/Not-Downloaded-Yet", tmp_path / "Qwen", tmp_path) is None


def test_every_engine_implements_the_interface() -> None:
    wanted = {name for name in dir(SpeechEngine) if not name.startswith("_")}
    assert wanted == {"load", "generate_batch", "suggest_batch_size", "compile_decode", "device", "memory_bytes",
                      "close"}
    for spec in ENGINES:
        engine = spec.engine_class()
        assert wanted <= set(dir(engine)), spec.capabilities.family
        for name in wanted - {"device"}:
            ours = inspect.signature(getattr(SpeechEngine, name)).parameters
            theirs = inspect.signature(getattr(engine, name)).parameters
            assert list(theirs)[:len(ours)] == list(ours) or name == "load", (spec.capabilities.family, name)


def test_capabilities_say_what_each_family_can_be_asked() -> None:
    omni, asr = QWEN2_5_OMNI.capabilities, QWEN3_ASR.capabilities
    assert omni.translates and not asr.translates
    assert (omni.max_segment_seconds, asr.max_segment_seconds) == (290, 1200)
    assert "uk" in omni.languages and "uk" not in asr.languages and "da" in asr.languages - omni.languages
    assert (omni.temperature, omni.repetition_penalty) == (0.1, 1.1)  # the guide's
    assert (asr.temperature, asr.repetition_penalty) == (0.0, 1.0)  # its generation config's
    assert json.loads(json.dumps(asr.to_dict()))["languages"] == sorted(asr.languages)


@pytest.mark.parametrize("module", ["serve.app", "serve.errors", "serve.distributed.api", "serve.engines",
                                    "serve.params", "serve.routes.health"])
def test_the_http_layer_and_the_api_role_do_not_import_torch(module: str) -> None:
    probe = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_a_published_id_declares_its_engine_before_it_is_downloaded(tmp_path: Path) -> None:
    assert declared_spec("Qwen/Qwen3-ASR-1.7B-hf", tmp_path / "Qwen", tmp_path) is QWEN3_ASR
    assert declared_spec("Qwen/Qwen2.5-Omni-7B-AWQ", tmp_path / "Qwen", tmp_path) is QWEN2_5_OMNI
    assert declared_spec("someone/fine-tuned-asr", tmp_path / "Qwen", tmp_path) is None


def test_an_undeclared_checkpoint_is_asked_what_any_engine_can_do_and_its_engine_refuses_the_rest(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    import numpy as np

    from serve.config import Settings
    from serve.engines.qwen2_5_omni import QwenOmniEngine
    from serve.errors import InvalidParameter, failure_of
    from serve.generation import GenerationOptions
    from serve.params import effective_engine, parse_params

    settings = Settings(checkpoint_path="someone/fine-tuned-asr", models_dir=tmp_path)
    assert effective_engine(settings) is None  # /health's engine: null until the checkpoint says
    accepted = parse_params({"language": "da", "segment_duration": "600"}, settings)
    assert (accepted.language, accepted.segment_duration) == ("da", 600)
    engine = QwenOmniEngine.load(tiny_checkpoint, device="cpu")
    try:
        for options, seconds, param in ((GenerationOptions(max_new_tokens=2, language="da"), 1, "language"),
                                        (GenerationOptions(max_new_tokens=2, target_language="fil"), 1,
                                         "target_language"),
                                        (GenerationOptions(max_new_tokens=2), 300, "segment_duration")):
            with pytest.raises(InvalidParameter) as refused:
                engine.generate_batch([np.zeros(16000 * seconds, dtype=np.float32)], options)
            assert refused.value.param == param and failure_of(refused.value).http_status == 400
    finally:
        engine.close()


def test_the_server_refuses_a_segment_length_its_engine_cannot_take_at_start(capsys: pytest.CaptureFixture) -> None:
    from serve.qwen2_5_omni_awq import main

    assert main(["--segment-duration", "600"]) == 2  # the default, published Qwen2.5-Omni-7B-AWQ: 290 s
    assert "Qwen2.5-Omni takes segments of at most 290 s" in capsys.readouterr().err
