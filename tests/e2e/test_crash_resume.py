"""The short form of scripts/crash_resume.py: SIGKILLs at random moments during async jobs, a restart after
each; every job completes with the transcript of an uninterrupted run, and inputs/ and temp/ end empty."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_jobs_survive_repeated_kills(tmp_path: Path) -> None:
    out = tmp_path / "crash.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "crash_resume.py"), "--jobs", "3",
                             "--seconds", "40", "--kills", "3", "--min-seconds", "0.3", "--max-seconds", "1.2",
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["kills"] >= 1 and figures["completed"] == figures["identical_transcripts"] == 3
    assert figures["left_in_folders"] == {"inputs": [], "temp": []}
