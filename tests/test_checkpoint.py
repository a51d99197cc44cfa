"""Checkpoint resolution: local folders first, the guide's Qwen/ layout, never the network with --local-model."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve.checkpoint import CheckpointNotFound, resolve_checkpoint


def fake_checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_an_existing_directory_is_used_as_is(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path / "anywhere" / "model")
    assert resolve_checkpoint(str(ckpt), local_only=True, models_dir=tmp_path / "Qwen",
                              app_dir=tmp_path) == ckpt.resolve()


def test_hub_id_resolves_under_the_app_directory(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
    found = resolve_checkpoint("Qwen/Qwen2.5-Omni-7B-AWQ", local_only=True, models_dir=tmp_path / "Qwen",
                               app_dir=tmp_path)
    assert found == ckpt.resolve()


def test_hub_id_resolves_under_a_custom_models_dir(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path / "models" / "Qwen2.5-Omni-7B-AWQ")
    found = resolve_checkpoint("Qwen/Qwen2.5-Omni-7B-AWQ", local_only=True, models_dir=tmp_path / "models",
                               app_dir=tmp_path / "app")
    assert found == ckpt.resolve()


def test_local_only_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("--local-model must not touch the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(CheckpointNotFound) as exc:
        resolve_checkpoint("Qwen/Qwen2.5-Omni-7B-AWQ", local_only=True, models_dir=tmp_path / "Qwen",
                           app_dir=tmp_path)
    assert "hf download Qwen/Qwen2.5-Omni-7B-AWQ --local-dir" in str(exc.value)


def test_a_folder_without_config_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "Qwen" / "Qwen2.5-Omni-7B-AWQ").mkdir(parents=True)
    with pytest.raises(CheckpointNotFound):
        resolve_checkpoint("Qwen/Qwen2.5-Omni-7B-AWQ", local_only=True, models_dir=tmp_path / "Qwen",
                           app_dir=tmp_path)


def test_hub_download_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(repo_id: str) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointNotFound, match="could not download"):
        resolve_checkpoint("Qwen/Qwen2.5-Omni-7B-AWQ", local_only=False, models_dir=tmp_path / "Qwen",
                           app_dir=tmp_path)
