"""Fetch the configured checkpoint into the local models folder, unless it is already there.

``python3 -m serve.download [server flags]`` takes the server's own flags (or QWEN_OMNI_* variables), so
that ``--checkpoint-path Qwen/Qwen2.5-Omni-7B-AWQ`` lands in ``Qwen/Qwen2.5-Omni-7B-AWQ``, where the server
finds it with ``--local-model``. The Docker image runs it before the server on every start (a no-op once
the model is there); the server itself never downloads when ``--local-model`` is given.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .checkpoint import CheckpointNotFound, resolve_checkpoint
from .config import APP_DIR, build_parser, parse_args

log = logging.getLogger(__name__)

ENTRY_SCRIPT = "qwen2_5_omni_awq.py"


def server_flags(argv: list[str]) -> list[str]:
    """The flags of a server command line (``python3 serve/qwen2_5_omni_awq.py --flag ...``), or argv itself."""
    for i, arg in enumerate(argv):
        if arg.endswith(ENTRY_SCRIPT):
            return argv[i + 1:]
    return argv


def ensure_checkpoint(argv: list[str]) -> Path | None:
    """Return the local checkpoint folder, downloading it from the hub first if it is missing.

    None for the scale-out API role, which holds no model.
    """
    settings = parse_args(server_flags(argv))
    if settings.role == "api":
        return None
    return _ensure(settings.checkpoint_path, settings.models_dir, "about 11 GB for Qwen2.5-Omni-7B-AWQ")


def ensure_aligner(argv: list[str]) -> Path | None:
    """The same for the forced aligner of --aligner-path (None when word timestamps are off, or in the API role)."""
    settings = parse_args(server_flags(argv))
    if settings.role == "api" or not settings.aligner_path:
        return None
    return _ensure(settings.aligner_path, settings.models_dir, "about 1.8 GB for Qwen3-ForcedAligner-0.6B")


def _ensure(checkpoint: str, models_dir: Path, size: str) -> Path:
    try:
        return resolve_checkpoint(checkpoint, local_only=True, models_dir=models_dir, app_dir=APP_DIR)
    except CheckpointNotFound:
        if Path(checkpoint).is_absolute():
            raise
    from huggingface_hub import snapshot_download

    target = models_dir / Path(checkpoint).name
    log.info("downloading %s into %s (%s; only on the first start)", checkpoint, target, size)
    snapshot_download(repo_id=checkpoint, local_dir=target)
    return target


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        build_parser().print_help()
        return 0
    status = 0
    for what, ensure in (("checkpoint", ensure_checkpoint), ("aligner", ensure_aligner)):
        try:
            path = ensure(argv)
        except Exception as exc:  # report, do not crash-loop with a traceback
            log.error("could not get the %s: %s", what, exc)
            status = 1
            continue
        if path is not None:
            log.info("%s ready at %s", what, path)
    return status


if __name__ == "__main__":
    sys.exit(main())
