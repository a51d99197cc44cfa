"""Retention: finished jobs, old transcripts and orphaned uploads are removed on a schedule."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from .jobs import JobStore

log = logging.getLogger(__name__)

# An upload or scratch file this old that no unfinished job refers to was left by a crash.
ORPHAN_AGE_SECONDS = 3600
INTERVAL_SECONDS = 600


class Janitor:
    def __init__(self, store: JobStore, *, inputs_dir: Path, temp_dir: Path, outputs_dir: Path,
                 job_retention_hours: float, output_retention_hours: float, segments_dir: Path | None = None,
                 interval_seconds: float = INTERVAL_SECONDS) -> None:
        self.store = store
        self.inputs_dir = Path(inputs_dir)
        self.temp_dir = Path(temp_dir)
        self.outputs_dir = Path(outputs_dir)
        self.segments_dir = Path(segments_dir) if segments_dir else None  # scale-out: one folder per running job
        self.job_retention = timedelta(hours=job_retention_hours)
        self.output_retention_seconds = output_retention_hours * 3600
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="janitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a failed sweep must not end the sweeping
                log.exception("cleanup failed")
            self._stop.wait(self.interval_seconds)

    def run_once(self, now: float | None = None) -> dict[str, int]:
        """One sweep; returns how many jobs and files it removed."""
        now = time.time() if now is None else now
        expired = self.store.finished_before(datetime.fromtimestamp(now) - self.job_retention)
        self.store.delete([j.id for j in expired])  # a list: a store that retries may read it twice
        unfinished = self.store.unfinished()
        in_use = {j.input_path.resolve() for j in unfinished}
        removed = {
            "jobs": len(expired),
            "inputs": self._sweep(self.inputs_dir, now - ORPHAN_AGE_SECONDS, keep=in_use),
            "temp": self._sweep(self.temp_dir, now - ORPHAN_AGE_SECONDS),
            "outputs": (self._sweep(self.outputs_dir, now - self.output_retention_seconds)
                        if self.output_retention_seconds else 0),
            "segments": self._sweep_folders(now - ORPHAN_AGE_SECONDS, keep={j.id for j in unfinished}),
        }
        if any(removed.values()):
            log.info("cleanup removed %s", ", ".join(f"{n} {what}" for what, n in removed.items() if n))
        return removed

    def _sweep_folders(self, older_than: float, keep: set[str]) -> int:
        """Segment folders of jobs that are over (a crash skipped their cleanup)."""
        if self.segments_dir is None or not self.segments_dir.is_dir():
            return 0
        removed = 0
        for folder in self.segments_dir.iterdir():
            if folder.is_dir() and folder.name not in keep and folder.stat().st_mtime < older_than:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    @staticmethod
    def _sweep(folder: Path, older_than: float, keep: set[Path] | None = None) -> int:
        removed = 0
        if not folder.is_dir():
            return 0
        for path in folder.iterdir():
            if not path.is_file() or path.name.startswith(".") or (keep and path.resolve() in keep):
                continue
            try:
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
