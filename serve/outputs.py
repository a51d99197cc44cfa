"""Saved transcripts under outputs/, with names that never collide."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path


class OutputStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def save(self, content: str, extension: str) -> str:
        """Write ``content`` to a new file; return its name (relative to the outputs folder).

        The guide's names are timestamps (20251011020000.txt); a random suffix keeps two requests in the
        same second apart, and exclusive creation makes an overwrite impossible even then. Raises OSError
        (a full disk) with nothing left behind.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        while True:
            name = f"{stamp}_{uuid.uuid4().hex[:8]}.{extension}"
            try:
                fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                    handle.write(content)
            except OSError:
                (self.directory / name).unlink(missing_ok=True)  # no half-written transcript left behind
                raise
            return name
