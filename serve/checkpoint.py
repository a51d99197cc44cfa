"""Where the checkpoint is: a local directory, a folder under the local models directory, or the hub."""

from __future__ import annotations

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


def checkpoint_config(checkpoint: str, models_dir: Path, app_dir: Path) -> Path | None:
    """The config.json of ``checkpoint`` where the loader will find it: a local folder, else the hub cache
    (a checkpoint downloaded there on an earlier load); None when it is in neither yet. Never downloads."""
    local = next((path for path in local_candidates(checkpoint, models_dir, app_dir) if _is_checkpoint(path)), None)
    if local is not None:
        return local / "config.json"
    if Path(checkpoint).expanduser().is_absolute():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id=checkpoint, filename="config.json")
    except Exception:  # not a repository id (a relative folder that is not there): nothing cached
        return None
    return Path(cached) if isinstance(cached, str) else None


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
