"""Printing and saving benchmark tables."""

from __future__ import annotations

import json
from pathlib import Path


def report(rows: list[dict], json_path: Path | None = None, width: int = 22) -> None:
    """Print ``rows`` as a right-aligned table and, if asked, write them as JSON."""
    columns = list(rows[0])
    print("  ".join(f"{c:>{width}}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>{width}}" for c in columns))
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2) + "\n")
