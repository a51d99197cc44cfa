"""Qwen2.5-Omni transcription server."""

__version__ = "0.1.0"
