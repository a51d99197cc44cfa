"""Where the checkpoint is: a local directory, a folder under the local models directory, or the hub."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class CheckpointNotFound(Exception):
    """No usable checkpoint at the configured location."""


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def local_candidates(checkpoint: str, models_dir: Path, app_dir: Path) -> list[Path]:
    """Folders that may hold ``checkpoint`` locally, most specific first.

    ``Qwen/Qwen2.5-Omni-7B-AWQ`` is both the hub id and, relative to the app directory, the folder
    the guide tells users to download into, so both spellings are looked up.
    """
    given = Path(checkpoint).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, app_dir / given]
    candidates += [models_dir / given, models_dir / given.name]
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


QWEN3_ASR_ARCHITECTURE = "Qwen3ASRForConditionalGeneration"  # the forced aligner shares its config class only


def is_qwen3_asr(path: Path) -> bool:
    """Whether the checkpoint folder at ``path`` holds Qwen3-ASR (by its config's ``architectures``); a
    folder that is not there yet (downloaded on first use) reads as the default family, Qwen2.5-Omni."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return QWEN3_ASR_ARCHITECTURE in (config.get("architectures") or [])


def local_checkpoint(checkpoint: str, models_dir: Path, app_dir: Path) -> Path | None:
    """The local folder holding ``checkpoint``, if there is one (never downloads)."""
    return next((path for path in local_candidates(checkpoint, models_dir, app_dir) if _is_checkpoint(path)), None)


def resolve_checkpoint(checkpoint: str, *, local_only: bool, models_dir: Path, app_dir: Path) -> Path:
    """Return a local directory holding ``checkpoint``, downloading it from the hub only when allowed."""
    candidates = local_candidates(checkpoint, models_dir, app_dir)
    for path in candidates:
        if _is_checkpoint(path):
            return path.resolve()
    if local_only or Path(checkpoint).expanduser().is_absolute():
        looked = ", ".join(str(p) for p in candidates)
        raise CheckpointNotFound(
            f"checkpoint {checkpoint!r} not found locally (looked in: {looked}). Download it first, e.g. "
            f"`hf download {checkpoint} --local-dir {models_dir / Path(checkpoint).name}` "
            f"(or `git lfs clone https://huggingface.co/{checkpoint}` inside {models_dir})"
        )
    from huggingface_hub import snapshot_download

    log.info("downloading %s from the Hugging Face hub", checkpoint)
    try:
        return Path(snapshot_download(repo_id=checkpoint))
    except Exception as exc:  # network errors, unknown repo, auth: all mean "not available"
        raise CheckpointNotFound(f"could not download {checkpoint!r} from the hub: {exc}") from exc
