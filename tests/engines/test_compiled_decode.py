"""Compiled decode (static KV cache + torch.compile) on the tiny checkpoints, on the CPU: the same greedy
tokens as the eager path, compiled at load for every batch bucket, and nothing kept after unloading."""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from serve.engines.compiled_decode import (
    CACHE_STEP,
    PROMPT_ROOM,
    CompiledDecoder,
    batch_buckets,
    bucket_for,
    cache_length,
)
from serve.engines.qwen2_5_omni import GenerationOptions, QwenOmniEngine
from tests.conftest import form_upload, sine

GREEDY = GenerationOptions(max_new_tokens=24, temperature=0.0)
CLIPS = [sine(1.5, 330.0), sine(3.0, 440.0), sine(2.2, 550.0)]  # three rows: padded to a bucket of 4


def test_batch_buckets_are_powers_of_two_and_the_batch_size() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(16) == [1, 2, 4, 8, 16]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert [bucket_for(n, 12) for n in (1, 2, 3, 5, 9, 12)] == [1, 2, 4, 8, 12, 12]
    assert bucket_for(20, 12) is None  # beyond the runner's batch size
    with pytest.raises(ValueError):
        batch_buckets(0)


def test_the_cache_length_is_fixed_at_load_and_plans_fit_in_it() -> None:
    thirty = cache_length(prompt_tokens=790, audio_seconds=30.0, max_new_tokens=8192)
    assert thirty % CACHE_STEP == 0 and thirty >= 790 + PROMPT_ROOM + 480  # 16 tokens per second of audio
    assert cache_length(60, 1.0, 8192) == CACHE_STEP  # never less than the minimum budget, rounded up
    model = SimpleNamespace(device=torch.device("cpu"))  # a test double: plans need no weights
    decoder = CompiledDecoder(model, batch_size=16, cache_len=thirty)
    plan = decoder.plan(3, 790, 30.0, 8192)
    assert plan is not None and plan.batch == 4 and plan.new_tokens == 480
    assert decoder.plan(1, 790, 30.0, 100).new_tokens == 100  # never more than the request allows
    longer = decoder.plan(1, 1090, 30.0, 8192)  # a long context prompt: what is left of the cache
    assert longer is not None and longer.new_tokens == thirty - 1090 < 480
    assert decoder.plan(1, thirty - 10, 30.0, 8192) is None  # a segment longer than configured: eager
    assert decoder.plan(17, 790, 30.0, 8192) is None  # more rows than the runner's batch: eager


@pytest.fixture(scope="module")
def eager(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    engine = QwenOmniEngine.load(tiny_checkpoint, device="cpu")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def compiled(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    engine = QwenOmniEngine.load(tiny_checkpoint, device="cpu")
    engine.compile_decode(4, 3.0, GREEDY.max_new_tokens, cache_dir=tmp_path_factory.mktemp("compile-cache"))
    yield engine
    engine.close()


def assert_same(compiled: list, eager: list) -> None:
    """The same text and tokens, and (to float rounding) the same scores, row by row."""
    assert [(r.parts, r.tokens) for r in compiled] == [(r.parts, r.tokens) for r in eager]
    for a, b in zip(compiled, eager, strict=True):
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-3)
        assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-3)


def graphs_compiled() -> int:
    return torch._dynamo.utils.counters["frames"]["ok"]


def test_greedy_tokens_equal_the_eager_paths_with_no_compiling_after_the_warm_up(
        eager: QwenOmniEngine, compiled: QwenOmniEngine) -> None:
    before = graphs_compiled()
    for rows in (CLIPS[:1], CLIPS[:2], CLIPS):  # buckets 1, 2 and 4 (three rows and a repeated one)
        assert_same(compiled.generate_batch(rows, GREEDY), eager.generate_batch(rows, GREEDY))
    assert graphs_compiled() == before  # the warm-up at load compiled every bucket
    decoder = compiled.compiled
    with torch.inference_mode():
        storage = {decoder.cache_for(decoder.plan(n, 100, 1.0, 8)).layers[0].keys.data_ptr() for n in (1, 2, 3, 4)}
    assert len(storage) == 1  # every bucket's cache is a view of one storage, at the same address every call


def test_rows_past_the_compiled_budget_go_on_eagerly_to_the_same_tokens(
        eager: QwenOmniEngine, compiled: QwenOmniEngine, caplog: pytest.LogCaptureFixture) -> None:
    warm = compiled.compiled
    compiled.compiled = CompiledDecoder(compiled.model, batch_size=4, cache_len=warm.cache_len, tokens_per_second=0,
                                        min_budget=3)
    try:
        with caplog.at_level(logging.INFO, logger="serve.engines.qwen2_5_omni"):
            assert_same(compiled.generate_batch(CLIPS, GREEDY), eager.generate_batch(CLIPS, GREEDY))
    finally:
        compiled.compiled = warm
    assert "spent the compiled budget of 3 tokens and went on eagerly" in caplog.text


def test_sampling_and_the_repetition_penalty_run_compiled(compiled: QwenOmniEngine) -> None:
    options = GenerationOptions(max_new_tokens=12, temperature=0.8, repetition_penalty=1.3)
    texts = compiled.transcribe_batch(CLIPS[:2], options)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_unloading_drops_the_graphs_and_a_reload_compiles_from_the_disk_cache(tiny_checkpoint: Path,
                                                                                tmp_path: Path) -> None:
    engine = QwenOmniEngine.load(tiny_checkpoint, device="cpu")
    engine.compile_decode(1, 1.0, 8, cache_dir=tmp_path / "cache")
    # The first compile of the process named the folder (the fixture's, when it ran first): artefacts are there.
    assert any(Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).rglob("*"))
    ref = weakref.ref(engine.model)
    engine.close()
    assert engine.compiled is None and ref() is None

    hits = torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"]
    again = QwenOmniEngine.load(tiny_checkpoint, device="cpu")
    try:
        again.compile_decode(1, 1.0, 8, cache_dir=tmp_path / "cache")
        assert torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"] > hits
    finally:
        again.close()


def test_low_vram_mode_stays_eager(tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = QwenOmniEngine.load(tiny_checkpoint, device="cpu", low_vram=True)
    try:
        assert engine.compile_decode(2, 1.0, 8) == 0.0
        assert engine.compiled is None and "compiled decode is off in low-VRAM mode" in caplog.text
    finally:
        engine.close()


def test_the_server_compiles_its_awq_model_at_load_when_asked(make_app, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                              caplog: pytest.LogCaptureFixture) -> None:
    form = {"segment_duration": "2", "temperature": "0"}
    with caplog.at_level(logging.INFO):
        compiled = make_app(compiled_decode=True, segment_duration=2.0).test_client().post(
            "/transcribe/json", data=form_upload(audio_dir / "tone.wav", **form))
    assert compiled.status_code == 200, compiled.get_json()
    assert "compiled decode ready for batches of 1" in caplog.text  # at load, before the first segment
    eager = make_app(segment_duration=2.0).test_client().post("/transcribe/json",
                                                               data=form_upload(audio_dir / "tone.wav", **form))
    assert compiled.get_json()["segments"] == eager.get_json()["segments"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("weights", ["bf16", "awq"])
def test_cuda_compiled_decode_gives_the_eager_tokens(tiny_checkpoints: tuple[Path, Path], weights: str) -> None:
    checkpoint = tiny_checkpoints[weights == "awq"]
    eager = QwenOmniEngine.load(checkpoint, device="cuda")
    expected = [eager.transcribe_batch(CLIPS[:n], GREEDY) for n in (1, 3)]
    eager.close()
    compiled = QwenOmniEngine.load(checkpoint, device="cuda")
    try:
        compiled.compile_decode(4, 3.0, GREEDY.max_new_tokens)
        before = graphs_compiled()
        assert [compiled.transcribe_batch(CLIPS[:n], GREEDY) for n in (1, 3)] == expected
        assert graphs_compiled() == before
    finally:
        compiled.close()


def test_a_compiler_that_fails_at_load_leaves_the_server_on_the_eager_path(make_app, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                                          monkeypatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    def failing_compile(self, *args, **kwargs) -> float:  # type: ignore[no-untyped-def]
        raise RuntimeError("inductor: no working C++ compiler (simulated)")

    monkeypatch.setattr(QwenOmniEngine, "compile_decode", failing_compile)
    client = make_app(compiled_decode=True).test_client()
    response = client.post("/transcribe/json", data=form_upload(audio_dir / "tone.wav", segment_duration="2"))
    assert response.status_code == 200, response.get_json()
    assert "compiled decode failed at load: generating on the default (eager) path" in caplog.text
