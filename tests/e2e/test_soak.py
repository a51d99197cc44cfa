"""The soak test in its short form: concurrent valid and invalid requests, nothing lost, nothing but JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_short_soak(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--clients", "12",
                             "--requests", "80", "--queue-depth", "4", "--time-limit", "240", "--json", str(report)],
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(report.read_text())
    assert summary["requests"] == 80
    assert summary["lost"] == 0 and summary["server_errors_500"] == 0 and summary["non_json"] == 0
    assert summary["unexpected_status"] == 0
    assert summary["busy_503"] > 0  # 12 clients, 4 jobs running and 4 waiting: back-pressure was exercised
    assert summary["health_probes"] > 0
