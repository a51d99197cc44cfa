"""The scores kept while generating equal the model's own log-probabilities of the tokens it chose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from serve.engines.qwen2_5_omni import QwenOmniEngine
from serve.generation import GenerationOptions, SegmentResult


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path) -> QwenOmniEngine:
    engine = QwenOmniEngine.load(tiny_checkpoint, device="cpu")
    yield engine
    engine.close()


def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(0.1 * rng.standard_normal(16000 * seconds)).astype(np.float32) for seconds in (2, 3)]


def test_tokens_and_scores_are_the_model_s_own(engine: QwenOmniEngine) -> None:
    options = GenerationOptions(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)
    batch = clips()
    results = engine.generate_batch(batch, options)
    for samples, result in zip(batch, results, strict=True):
        assert engine.tokenizer.decode(list(result.tokens), skip_special_tokens=True) == result.parts[0]
        # One forward pass over the prompt and the generated tokens gives each token's log-probability (and,
        # when the row ended, its end token's: one of the two end ids).
        inputs = engine._inputs([samples])
        prompt = inputs["input_ids"].shape[1]
        ended = len(result.tokens) < options.max_new_tokens
        expected = []
        for end in engine._stop_ids if ended else [None]:
            ids = torch.tensor([[*result.tokens, *([end] if end is not None else [])]])
            with torch.inference_mode():
                logits = engine.model(input_ids=torch.cat([inputs["input_ids"], ids], dim=1),
                                      attention_mask=torch.ones(1, prompt + ids.shape[1], dtype=torch.long),
                                      input_features=inputs["input_features"],
                                      feature_attention_mask=inputs["feature_attention_mask"]).logits[0].float()
            log_probs = torch.log_softmax(logits[prompt - 1:-1], dim=-1).gather(1, ids[0][:, None]).squeeze(1)
            expected.append(float(log_probs.mean()))
        assert any(result.avg_logprob == pytest.approx(value, abs=2e-3) for value in expected), expected
        first = torch.softmax(logits[prompt - 1], dim=-1)
        assert result.no_speech_prob == pytest.approx(float(first[engine._stop_ids].sum()), abs=2e-3)


def test_sampled_scores_are_before_temperature_and_halves_join(engine: QwenOmniEngine) -> None:
    hot = engine.generate_batch(clips()[:1], GenerationOptions(max_new_tokens=6, temperature=1.5))[0]
    assert len(hot.tokens) <= 6 and hot.avg_logprob <= 0 and 0 <= hot.no_speech_prob <= 1
    a = SegmentResult(parts=("a",), tokens=(1, 2, 3), avg_logprob=-1.0, no_speech_prob=0.2)
    b = SegmentResult(parts=("b",), tokens=(4,), avg_logprob=-3.0, no_speech_prob=0.1)
    joined = SegmentResult.joined([a, b])
    assert joined.parts == ("a", "b") and joined.tokens == (1, 2, 3, 4) and joined.no_speech_prob == 0.1
    assert joined.avg_logprob == pytest.approx((4 * -1.0 + 2 * -3.0) / 6)
    assert SegmentResult.from_dict(joined.to_dict()) == joined
