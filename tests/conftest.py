"""Shared fixtures: tiny checkpoints built by the project's script, generated audio, apps on tiny models."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_tiny_aligner  # noqa: E402
import build_tiny_asr  # noqa: E402
import build_tiny_checkpoints  # noqa: E402
from local_redis import RedisServer  # noqa: E402

from serve.config import Settings  # noqa: E402

# Keep generation short in tests: random weights never emit an end token, so every segment runs to this.
TEST_MAX_NEW_TOKENS = 8


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bf16 full Omni checkpoint, AWQ full Omni checkpoint), built once per session."""
    out = tmp_path_factory.mktemp("checkpoints")
    return build_tiny_checkpoints.build(out)


@pytest.fixture(scope="session")
def tiny_aligner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-ForcedAligner checkpoint in the published -hf layout, built once per session."""
    return build_tiny_aligner.build_aligner(tmp_path_factory.mktemp("aligner"))


@pytest.fixture(scope="session")
def tiny_asr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-ASR checkpoint in the published -hf layout, built once per session."""
    return build_tiny_asr.build_asr(tmp_path_factory.mktemp("asr"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoints: tuple[Path, Path]) -> Path:
    return tiny_checkpoints[0]


@pytest.fixture(scope="session")
def tiny_awq_checkpoint(tiny_checkpoints: tuple[Path, Path]) -> Path:
    return tiny_checkpoints[1]


def run_ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *args], check=True)


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated test audio: espeak-ng speech in several containers, tones, silence, a video."""
    out = tmp_path_factory.mktemp("audio")
    speech = out / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "-s", "150",
                    "Hello world. This is a test of the transcription server. Thank you for listening."],
                   check=True)
    run_ffmpeg("-i", str(speech), "-ar", "44100", "-ac", "2", str(out / "speech.mp3"))
    run_ffmpeg("-i", str(speech), "-c:a", "aac", str(out / "speech.m4a"))
    run_ffmpeg("-i", str(speech), str(out / "speech.flac"))
    run_ffmpeg("-i", str(speech), "-c:a", "libvorbis", str(out / "speech.ogg"))
    run_ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:d=3", "-i", str(speech), "-shortest",
               "-c:v", "mpeg4", "-c:a", "aac", str(out / "speech_video.mp4"))
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=7.3", str(out / "tone.wav"))
    run_ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "4", str(out / "silence.wav"))
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000:duration=25", str(out / "long_tone.wav"))
    return out


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session's store tests; each test that uses it starts from an empty database."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def settings_factory(tmp_path: Path, tiny_awq_checkpoint: Path):  # type: ignore[no-untyped-def]
    """Settings for an app on the tiny AWQ checkpoint, with folders under tmp_path."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "checkpoint_path": str(tiny_awq_checkpoint),
            "device": "cpu",
            "max_new_tokens": TEST_MAX_NEW_TOKENS,
            "idle_timeout": -1,
            "inputs_dir": tmp_path / "inputs",
            "temp_dir": tmp_path / "temp",
            "outputs_dir": tmp_path / "outputs",
            "models_dir": tmp_path / "Qwen",
            "data_dir": tmp_path / "data",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_app(settings_factory):  # type: ignore[no-untyped-def]
    """Build apps on the real engine and close their worker threads afterwards."""
    from serve.app import create_app
    from serve.services import EXTENSION_KEY

    apps = []

    def make(**overrides: object):  # type: ignore[no-untyped-def]
        app = create_app(settings_factory(**overrides))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions[EXTENSION_KEY].close()


@pytest.fixture
def app(make_app):  # type: ignore[no-untyped-def]
    return make_app()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


def services_of(app):  # type: ignore[no-untyped-def]
    from serve.services import EXTENSION_KEY

    return app.extensions[EXTENSION_KEY]


class OneSegmentAtATime:
    """Gives a test double that transcribes one segment (``transcribe(samples, options) -> str``) the engine
    interface the batch runner calls."""

    def __init__(self, recognizer) -> None:  # type: ignore[no-untyped-def]
        self.recognizer = recognizer

    def generate_batch(self, batch, options) -> list:  # type: ignore[no-untyped-def]
        from serve.generation import SegmentResult

        return [SegmentResult(parts=(self.recognizer.transcribe(samples, options),)) for samples in batch]

    def close(self) -> None:
        pass


def use_test_engine(app, recognizer, batch_size: int = 1) -> None:  # type: ignore[no-untyped-def]
    """Load ``recognizer`` (a test double) instead of the real engine, behind the real scheduler and batch runner."""
    from serve.batching import BatchRunner

    s = services_of(app)
    engine = recognizer if hasattr(recognizer, "generate_batch") else OneSegmentAtATime(recognizer)
    s.models._loader = lambda: BatchRunner(engine, batch_size, s.scheduler, aligner=s.aligner)


def form_upload(path: Path, name: str | None = None, **fields: str) -> dict:
    """Multipart form data for Flask's test client: the file at ``path`` (sent as ``name``) and fields."""
    return {"file": (io.BytesIO(path.read_bytes()), name or path.name), **fields}


def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def folder_is_empty(path: Path) -> bool:
    return not path.exists() or not any(p for p in path.iterdir() if p.name != ".gitkeep")


def sine(seconds: float, frequency: float = 440.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.fixture
def copy_checkpoint() -> Iterator:
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    yield copy


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Opens the same job table again on each call, as a restarted process would."""
    import redis

    from serve.distributed.redis_store import RedisJobStore
    from serve.job_store import SqliteJobStore

    if request.param == "sqlite":
        return lambda: SqliteJobStore(tmp_path / "jobs.sqlite3")
    url = request.getfixturevalue("redis_url")
    return lambda: RedisJobStore(redis.Redis.from_url(url))


@pytest.fixture
def store(open_store):  # type: ignore[no-untyped-def]
    return open_store()
