"""docker-compose.yml validates with Compose v2 for each profile and keeps the guide's contract."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from serve.config import APP_DIR, parse_args
from tests.conftest import ROOT
from tests.deploy.conftest import compose_binary, compose_config

GUIDE_FLAGS = ["--checkpoint-path", "Qwen/Qwen2.5-Omni-7B-AWQ", "--host", "0.0.0.0", "--port", "5000",
               "--flash-attn2", "--local-model", "--repetition-penalty", "1.1", "--idle-timeout", "300"]


def seconds(duration: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)(h|m|s)", duration):
        total += float(value) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


@pytest.fixture(scope="module")
def awq() -> dict:
    return compose_config("--profile", "awq")["services"]["qwen2.5-omni-http-awq"]


def test_each_profile_validates_and_selects_its_service(tmp_path: Path) -> None:
    assert list(compose_config("--profile", "awq")["services"]) == ["qwen2.5-omni-http-awq"]  # no redis.env needed
    assert list(compose_config("--profile", "fp16")["services"]) == ["qwen2.5-omni-http"]
    assert list(compose_config("--profile", "asr")["services"]) == ["qwen3-asr-http"]
    scale = compose_config("--profile", "scale", env=with_redis_secret(tmp_path))["services"]
    assert sorted(scale) == ["api", "redis", "worker-0", "worker-1"]
    assert compose_config().get("services", {}) == {}  # no profile, nothing starts by accident


def test_awq_service_runs_the_guides_command(awq: dict) -> None:
    command = awq["command"]
    assert command[:2] == ["python3", "serve/qwen2_5_omni_awq.py"]
    assert command[2:] == GUIDE_FLAGS
    settings = parse_args(command[2:])  # the flags parse with the server's own parser
    assert settings.local_model and settings.flash_attn2 and settings.idle_timeout == 300
    assert awq["image"] == "qwen2.5-omni-app:latest" and awq["build"]["context"] == str(ROOT)
    assert awq["ports"] == [{"mode": "ingress", "target": 5000, "published": "5000", "protocol": "tcp"}]
    assert awq["restart"] == "unless-stopped"


def test_gpu_reservation(awq: dict) -> None:
    (device,) = awq["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_volumes_for_models_outputs_jobs_and_hub_cache(awq: dict) -> None:
    mounts = {v["target"]: v for v in awq["volumes"]}
    assert mounts["/app/Qwen"]["source"] == str(ROOT / "Qwen")
    assert mounts["/app/outputs"]["source"] == str(ROOT / "outputs")
    assert mounts["/app/data"]["source"] == str(ROOT / "data")  # the job table survives the container
    assert mounts["/home/app/.cache/huggingface"]["type"] == "volume"


def test_healthcheck_allows_a_first_download_and_shutdown_lets_jobs_finish(awq: dict) -> None:
    health = awq["healthcheck"]
    assert "/health" in " ".join(health["test"])
    assert seconds(health["start_period"]) >= 15 * 60  # ~11 GB on the first start
    graceful = parse_args(awq["command"][2:]).graceful_timeout
    assert seconds(awq["stop_grace_period"]) > graceful


def test_fp16_profile_serves_the_full_precision_model() -> None:
    service = compose_config("--profile", "fp16")["services"]["qwen2.5-omni-http"]
    settings = parse_args(service["command"][2:])
    assert settings.checkpoint_path == "Qwen/Qwen2.5-Omni-7B" and settings.local_model
    assert service["ports"][0]["published"] == "5001"


def test_asr_profile_serves_qwen3_asr_greedy_on_its_own_port() -> None:
    service = compose_config("--profile", "asr")["services"]["qwen3-asr-http"]
    settings = parse_args(service["command"][2:])
    assert settings.checkpoint_path == "Qwen/Qwen3-ASR-1.7B-hf" and settings.local_model
    assert settings.temperature == 0 and settings.repetition_penalty == 1.0  # its generation config: greedy
    assert service["ports"][0]["published"] == "5002"
    # Downloaded on the first start like the others (the image's entry point fetches --checkpoint-path).
    assert "QWEN_OMNI_AUTO_DOWNLOAD=1" in " ".join(f"{k}={v}" for k, v in service["environment"].items())


def test_guides_port_mapping_example(tmp_path: Path) -> None:
    """ports: "8080:5000" (the guide's example) as an override file."""
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / "docker-compose.override.yml").write_text(
        'services:\n  qwen2.5-omni-http-awq:\n    ports: !override\n      - "8080:5000"\n')
    service = compose_config("--profile", "awq", project_dir=tmp_path)["services"]["qwen2.5-omni-http-awq"]
    assert [(p["published"], p["target"]) for p in service["ports"]] == [("8080", 5000)]


def test_guides_cuda_visible_devices_example() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
    service = compose_config("--profile", "awq", env=env)["services"]["qwen2.5-omni-http-awq"]
    assert service["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    default = compose_config("--profile", "awq", env={k: v for k, v in os.environ.items()
                                                       if k != "CUDA_VISIBLE_DEVICES"})
    assert default["services"]["qwen2.5-omni-http-awq"]["environment"]["CUDA_VISIBLE_DEVICES"] == "0"


def with_redis_secret(folder: Path, password: str = "test-password") -> dict[str, str]:
    """The environment for a scale-profile config: a redis.env (never in the repository) under ``folder``."""
    secret = folder / "redis.env"
    secret.write_text(f"REDIS_PASSWORD={password}\n")
    return {**os.environ, "QWEN_OMNI_REDIS_ENV_FILE": str(secret)}


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return compose_config("--profile", "scale", env=with_redis_secret(tmp_path_factory.mktemp("secret")))["services"]


def test_scale_profile_one_api_and_one_worker_per_gpu(scale: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    api, workers = scale["api"], [scale["worker-0"], scale["worker-1"]]
    assert "deploy" not in api or not api["deploy"].get("resources")  # the api holds no model
    assert api["ports"][0]["published"] == "5000"
    gpus = [w["deploy"]["resources"]["reservations"]["devices"] for w in workers]
    assert [d[0]["device_ids"] for d in gpus] == [["0"], ["1"]] and all(d[0]["driver"] == "nvidia" for d in gpus)
    for service, role in ((api, "api"), *((w, "worker") for w in workers)):
        monkeypatch.setenv("REDIS_URL", service["environment"]["REDIS_URL"])
        settings = parse_args(service["command"][2:])
        assert settings.role == role and settings.redis_url == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        # The api hands segments to the workers through data/segments: the same folder in every container.
        assert {v["target"]: v["source"] for v in service["volumes"]}["/app/data"] == str(ROOT / "data")
        assert settings.segments_dir == APP_DIR / "data" / "segments"  # /app/data/segments in the image
    names = [w["environment"]["QWEN_OMNI_WORKER_NAME"] for w in workers]
    assert names == ["worker-0", "worker-1"]
    assert all(parse_args(w["command"][2:]).local_model for w in workers)
    # Only worker-0 downloads the model into the shared ./Qwen; worker-1 starts once it is healthy.
    assert workers[1]["environment"]["QWEN_OMNI_AUTO_DOWNLOAD"] == "0"
    assert workers[1]["depends_on"]["worker-0"]["condition"] == "service_healthy"
    assert all("qwen:worker:" in " ".join(w["healthcheck"]["test"]) for w in workers)


def test_scale_profile_needs_a_redis_password_from_a_file_outside_the_repository() -> None:
    result = subprocess.run([str(compose_binary()), "--project-directory", str(ROOT), "--profile", "scale", "config"],
                            capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "QWEN_OMNI_REDIS_ENV_FILE"})
    assert (ROOT / "redis.env").exists() or (result.returncode != 0 and "redis.env" in result.stderr)
    assert "redis.env" in (ROOT / ".gitignore").read_text().split()
    assert "REDIS_PASSWORD=" in (ROOT / "redis.env.example").read_text()


def test_scale_profile_redis_and_its_clients_use_the_password(scale: dict) -> None:
    assert "--requirepass" in " ".join(scale["redis"]["command"]) and "REDISCLI_AUTH" in " ".join(
        scale["redis"]["healthcheck"]["test"])
    for name in ("redis", "api", "worker-0", "worker-1"):
        assert scale[name]["environment"]["REDIS_PASSWORD"] == "test-password", name
    assert all("password=os.environ['REDIS_PASSWORD']" in " ".join(scale[w]["healthcheck"]["test"])
               for w in ("worker-0", "worker-1"))


def test_scale_profile_redis_keeps_its_data_across_restarts(scale: dict) -> None:
    redis = scale["redis"]
    assert "redis-server --appendonly yes" in " ".join(redis["command"])
    assert [v["target"] for v in redis["volumes"]] == ["/data"] and redis["volumes"][0]["type"] == "volume"
