"""The result of a transcription: text pieces with the true times of the audio they cover."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .text import join_pieces


@dataclass(frozen=True)
class Piece:
    """What the model heard in one segment, and where that segment lies in the input (seconds)."""

    start: float
    end: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "text": self.text}


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
        return cls(pieces=tuple(Piece(p["start"], p["end"], p["text"]) for p in data["pieces"]),
                   duration=data["duration"])
