"""The result of a transcription: text pieces with the true times of the audio they cover."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .text import join_pieces


@dataclass(frozen=True)
class Word:
    """A word of a transcript and when it is spoken (seconds), as the forced aligner timed it."""

    word: str
    start: float
    end: float

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "start": self.start, "end": self.end}

    def shifted(self, seconds: float) -> Word:
        return Word(self.word, round(self.start + seconds, 3), round(self.end + seconds, 3))

    def within(self, start: float, end: float) -> Word:
        """The word with its times held inside [start, end]."""
        begin = min(max(self.start, start), end)
        return Word(self.word, begin, min(max(self.end, begin), end))


def _kept(char: str) -> bool:
    """The characters the aligner keeps of a text's words (transformers' Qwen3-ASR processor keeps letters,
    digits and apostrophes; CJK ideographs are letters)."""
    return char == "'" or unicodedata.category(char)[0] in "LN"


# How far past the expected place a word may be found: words come in order, and a word the aligner split
# differently (Japanese, Korean) or that conversion changed is found a little later or not at all.
_WORD_SLACK = 16


def word_spans(text: str, words: tuple[Word, ...]) -> list[tuple[int, int] | None]:
    """Where each word lies in ``text`` (start, end), or None where it cannot be found.

    The aligner's words are the kept characters of the text's words, in order: each is looked for in the
    text's kept characters from where the last one ended (a few characters of slack), never further, so
    that one word that is not there cannot throw the words after it off."""
    positions = [i for i, char in enumerate(text) if _kept(char)]
    kept = "".join(text[i] for i in positions)
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for word in words:
        target = "".join(char for char in word.word if _kept(char))
        found = kept.find(target, cursor, cursor + len(target) + _WORD_SLACK) if target else -1
        if found < 0:
            spans.append(None)
            continue
        spans.append((positions[found], positions[found + len(target) - 1] + 1))
        cursor = found + len(target)
    return spans


@dataclass(frozen=True)
class Piece:
    """What the model heard in one segment, and where that segment lies in the input (seconds).

    With it, when the model path provides them: the generated token ids, their mean log-probability, the
    probability that the model ended at once (no speech), and the words with their times (None when the
    words were not aligned; ``alignment_note`` then says why, when alignment was asked for).
    """

    start: float
    end: float
    text: str
    tokens: tuple[int, ...] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    words: tuple[Word, ...] | None = None
    alignment_note: str | None = None
    language: str | None = None  # what the model said it heard (ISO code), for models that say

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"start": self.start, "end": self.end, "text": self.text}
        if self.language:
            data["language"] = self.language
        if self.tokens is not None:
            data.update(tokens=list(self.tokens), avg_logprob=self.avg_logprob, no_speech_prob=self.no_speech_prob)
        if self.words is not None:
            data["words"] = [w.to_dict() for w in self.words]
        if self.alignment_note:
            data["alignment_note"] = self.alignment_note
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Piece:
        """A piece as stored with a job (records written before a field existed lack it)."""
        tokens, words = data.get("tokens"), data.get("words")
        return cls(start=data["start"], end=data["end"], text=data["text"],
                   tokens=tuple(tokens) if tokens is not None else None,
                   avg_logprob=data.get("avg_logprob"), no_speech_prob=data.get("no_speech_prob"),
                   words=tuple(Word(w["word"], w["start"], w["end"]) for w in words) if words is not None else None,
                   alignment_note=data.get("alignment_note"), language=data.get("language"))


@dataclass(frozen=True)
class Transcript:
    pieces: tuple[Piece, ...] = field(default_factory=tuple)
    duration: float = 0.0  # seconds of audio decoded

    @property
    def text(self) -> str:
        return join_pieces([p.text for p in self.pieces])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored with a job."""
        return {"duration": self.duration, "pieces": [p.to_dict() for p in self.pieces]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        return cls(pieces=tuple(Piece.from_dict(p) for p in data["pieces"]), duration=data["duration"])

    @property
    def heard_language(self) -> str | None:
        """The language the model said it heard most (by characters of text), if it said."""
        weights: dict[str, int] = {}
        for piece in self.pieces:
            if piece.language:
                weights[piece.language] = weights.get(piece.language, 0) + len(piece.text)
        return max(weights, key=weights.__getitem__) if weights else None

    @property
    def alignment_notes(self) -> list[str]:
        """Why some pieces have no word times (each reason once), when alignment was asked for."""
        return list(dict.fromkeys(p.alignment_note for p in self.pieces if p.alignment_note))
