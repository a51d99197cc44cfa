"""Scores of what ``generate`` produced: each generated token's log-probability, and the probability that the
model would have ended at once (no speech), recorded while generating instead of keeping every step's logits.

``output_scores`` would keep a [rows, vocabulary] tensor per step (152 k floats per row: gigabytes for a batch
of long segments). :class:`TokenScores` keeps one step's log-softmax and, at the next step, takes from it the
log-probability of the token that was chosen. transformers runs custom logits processors after its own
(repetition penalty) and before temperature, so the scores are the model's after the repetition penalty and
before temperature, which is what Whisper reports as ``avg_logprob``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor


class TokenScores(LogitsProcessor):
    """Pass it in ``generate``'s ``logits_processor``; one instance per call."""

    def __init__(self, end_ids: list[int]) -> None:
        self._end_ids = end_ids
        self._previous: torch.Tensor | None = None  # the last step's log-softmax [rows, vocabulary]
        self._steps: list[torch.Tensor] = []  # per step, the chosen token's log-probability [rows]
        self._ends: list[torch.Tensor] = []  # per step, the probability of an end token [rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._previous is not None:
            self._steps.append(self._previous.gather(1, input_ids[:, -1:]).squeeze(1))
        log_probs = torch.log_softmax(scores.float(), dim=-1)
        self._ends.append(log_probs[:, self._end_ids].exp().sum(dim=-1))
        self._previous = log_probs
        return scores

    @property
    def end_at_once(self) -> torch.Tensor | None:
        """[rows]: the probability that each row ends at its first step."""
        return self._ends[0] if self._ends else None

    def end_probs(self) -> torch.Tensor:
        """[rows, steps]: the probability of ending at each step."""
        return torch.stack(self._ends, dim=1)

    def log_probs(self, generated: torch.Tensor) -> torch.Tensor:
        """[rows, steps]: the log-probability of each token of ``generated`` (the new tokens only; as many rows
        as the generate call had)."""
        steps = list(self._steps)
        if self._previous is not None and generated.shape[1] > len(steps):
            steps.append(self._previous.gather(1, generated[:, len(steps):len(steps) + 1]).squeeze(1))
        self._previous = None  # the last step's vocabulary-wide tensor is not needed any more
        if not steps:
            return torch.zeros(generated.shape[0], 0, device=generated.device)
        return torch.stack(steps, dim=1)[:, : generated.shape[1]]


@dataclass(frozen=True)
class RowScores:
    tokens: list[int]  # the generated ids, without the end token and the padding after it
    avg_logprob: float  # over the tokens and the end token (when the row ended)
    no_speech_prob: float


def row_scores(generated: torch.Tensor, log_probs: torch.Tensor, end_at_once: torch.Tensor,
               end_ids: list[int], starts: list[int] | None = None,
               end_probs: torch.Tensor | None = None) -> list[RowScores]:
    """Per row of ``generated`` [rows, n]: its tokens up to its first end token, and their scores.

    ``starts``: where each row's text begins (after a prefix the model writes first, such as Qwen3-ASR's
    ``language X<asr_text>``); its tokens and scores are taken from there, and its no-speech probability is
    that of ending there (from ``end_probs`` [rows, steps])."""
    ends = torch.isin(generated, torch.tensor(end_ids, device=generated.device))
    ended = ends.any(dim=1)
    no_end = torch.full_like(ended, generated.shape[1], dtype=torch.long)
    first_end = torch.where(ended, ends.int().argmax(dim=1), no_end)
    rows = []
    for i, (row, stop) in enumerate(zip(generated.tolist(), first_end.tolist(), strict=True)):
        start = min(starts[i], stop) if starts else 0
        scored = log_probs[i, start: min(stop + 1, log_probs.shape[1])]
        scored = scored[~scored.isnan()]  # positions that are padding, not the row's own tokens
        no_speech = end_at_once[i]
        if start and end_probs is not None:
            no_speech = end_probs[i, min(start, end_probs.shape[1] - 1)]
        rows.append(RowScores(tokens=row[start:stop],
                              avg_logprob=round(float(scored.mean()), 4) if len(scored) else 0.0,
                              no_speech_prob=round(float(no_speech), 4)))
    return rows
