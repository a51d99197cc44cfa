"""Shared fixtures for the end-to-end tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.test_guide_examples import Server, start_server


@contextmanager
def tiny_server(root: Path, checkpoint: Path, *flags: str) -> Iterator[Server]:
    """The real server, as deployed: the checkpoint in Qwen/Qwen2.5-Omni-7B-AWQ under ``root``, --local-model.

    It must stop cleanly (exit status 0) at the end of the block.
    """
    shutil.copytree(checkpoint, root / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
    server = start_server(root, "--local-model", *flags)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log.read_text()
