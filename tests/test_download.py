"""serve.download: fetch the checkpoint into Qwen/ only when it is missing (the image's first start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve import download


class FakeHub:
    """Test double for huggingface_hub.snapshot_download: records calls, writes a config.json."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path]] = []

    def __call__(self, repo_id: str, local_dir: Path) -> str:
        self.calls.append((repo_id, Path(local_dir)))
        Path(local_dir).mkdir(parents=True)
        (Path(local_dir) / "config.json").write_text("{}")
        return str(local_dir)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    import huggingface_hub

    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def compose_command(models: Path) -> list[str]:
    return ["python3", "serve/qwen2_5_omni_awq.py", "--checkpoint-path", "Qwen/Qwen2.5-Omni-7B-AWQ",
            "--local-model", "--models-dir", str(models)]


def test_downloads_a_missing_checkpoint_into_the_models_folder(hub: FakeHub, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert download.main(compose_command(tmp_path / "Qwen")) == 0
    assert hub.calls == [("Qwen/Qwen2.5-Omni-7B-AWQ", tmp_path / "Qwen" / "Qwen2.5-Omni-7B-AWQ")]
    assert download.main(compose_command(tmp_path / "Qwen")) == 0
    assert len(hub.calls) == 1  # present now: nothing fetched on later starts


def test_an_absolute_path_that_does_not_exist_is_an_error_not_a_download(hub: FakeHub, tmp_path: Path) -> None:
    assert download.main(["--checkpoint-path", str(tmp_path / "nowhere")]) == 1
    assert hub.calls == []


def test_server_flags_are_found_after_the_script() -> None:
    assert download.server_flags(["python3", "serve/qwen2_5_omni_awq.py", "--port", "1"]) == ["--port", "1"]
    assert download.server_flags(["--port", "1"]) == ["--port", "1"]


def test_the_aligner_is_fetched_beside_the_model_when_word_timestamps_are_on(hub: FakeHub, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    command = [*compose_command(tmp_path / "Qwen"), "--aligner-path", "Qwen/Qwen3-ForcedAligner-0.6B-hf"]
    assert download.main(command) == 0
    assert [repo for repo, _ in hub.calls] == ["Qwen/Qwen2.5-Omni-7B-AWQ", "Qwen/Qwen3-ForcedAligner-0.6B-hf"]
    assert hub.calls[1][1] == tmp_path / "Qwen" / "Qwen3-ForcedAligner-0.6B-hf"
    monkeypatch.setenv("QWEN_OMNI_ALIGNER_PATH", "")  # the compose file's default: off
    assert download.ensure_aligner(compose_command(tmp_path / "Qwen")) is None
