"""Helpers shared by the route modules."""

from __future__ import annotations

from datetime import datetime


def iso(moment: datetime | None) -> str | None:
    """The guide's timestamp format: 2025-10-11T02:00:00.000000."""
    return moment.isoformat(timespec="microseconds") if moment else None


def now_iso() -> str:
    return iso(datetime.now())  # type: ignore[return-value]
