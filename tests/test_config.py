"""Settings: the guide's flags and defaults, environment variables, precedence, validation, --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serve.config import APP_DIR, Settings, parse_args, parse_size

ENTRY = APP_DIR / "serve" / "qwen2_5_omni_awq.py"


def test_defaults_are_the_guides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"QWEN_OMNI_{name.upper()}", raising=False)
    s = parse_args([])
    assert s.checkpoint_path == "Qwen/Qwen2.5-Omni-7B-AWQ"
    assert s.port == 5000
    assert s.segment_duration == 60
    assert s.max_new_tokens == 8192
    assert s.temperature == 0.1
    assert s.repetition_penalty == 1.1
    assert s.idle_timeout == 300
    assert s.local_model is False and s.flash_attn2 is False and s.preload is False
    assert s.compiled_decode is False and s.awq_dequant_rows == -1  # GPU: off until measured there (issue 15)
    fast = parse_args(["--compiled-decode", "--awq-dequant-rows", "256"])
    assert fast.compiled_decode is True and fast.awq_dequant_rows == 256
    assert s.max_upload_size == 4 * 1024**3
    assert (s.inputs_dir, s.temp_dir, s.outputs_dir, s.models_dir) == (
        APP_DIR / "inputs", APP_DIR / "temp", APP_DIR / "outputs", APP_DIR / "Qwen")


def test_the_guides_compose_command_line_parses() -> None:
    s = parse_args(["--checkpoint-path", "Qwen/Qwen2.5-Omni-7B-AWQ", "--host", "0.0.0.0", "--port", "5000",
                    "--flash-attn2", "--local-model", "--segment-duration", "30", "--max-new-tokens", "4096",
                    "--temperature", "0.05", "--repetition-penalty", "1.2", "--idle-timeout", "600"])
    assert (s.host, s.port, s.flash_attn2, s.local_model) == ("0.0.0.0", 5000, True, True)
    assert (s.segment_duration, s.max_new_tokens, s.temperature, s.repetition_penalty, s.idle_timeout) == (
        30, 4096, 0.05, 1.2, 600)


def test_environment_sets_and_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_OMNI_IDLE_TIMEOUT", "42")
    monkeypatch.setenv("QWEN_OMNI_PORT", "8080")
    monkeypatch.setenv("QWEN_OMNI_FLASH_ATTN2", "true")
    monkeypatch.setenv("QWEN_OMNI_MAX_UPLOAD_SIZE", "512M")
    s = parse_args(["--port", "9000"])
    assert s.idle_timeout == 42 and s.port == 9000 and s.flash_attn2 is True
    assert s.max_upload_size == 512 * 1024**2
    assert parse_args(["--no-flash-attn2"]).flash_attn2 is False


@pytest.mark.parametrize("idle", ["0", "-1", "12.5"])
def test_idle_timeout_accepts_zero_and_negative(idle: str) -> None:
    assert parse_args(["--idle-timeout", idle]).idle_timeout == float(idle)


@pytest.mark.parametrize("argv", [
    ["--port", "0"], ["--port", "abc"], ["--segment-duration", "0"], ["--segment-duration", "1201"],
    ["--max-new-tokens", "0"], ["--max-new-tokens", "100000"], ["--temperature", "-1"],
    ["--repetition-penalty", "0"], ["--device", "tpu"], ["--max-upload-size", "lots"], ["--bogus"],
])
def test_bad_flags_exit_with_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "size"), [("4G", 4 * 1024**3), ("512M", 512 * 1024**2), ("1024", 1024),
                                            ("1.5K", 1536), ("2GiB", 2 * 1024**3), (7, 7)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_help_lists_every_flag_and_its_environment_variable() -> None:
    out = subprocess.run([sys.executable, str(ENTRY), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--checkpoint-path", "--local-model", "--host", "--port", "--flash-attn2", "--segment-duration",
                 "--max-new-tokens", "--temperature", "--repetition-penalty", "--idle-timeout", "--preload"):
        assert flag in out
    assert "QWEN_OMNI_IDLE_TIMEOUT" in out


def test_scale_out_roles_need_redis(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("QWEN_OMNI_REDIS_URL", raising=False)
    assert parse_args([]).role == "all"  # the embedded default needs no Redis
    for role in ("api", "worker"):
        with pytest.raises(SystemExit) as exc:
            parse_args(["--role", role])
        assert exc.value.code == 2 and f"--role {role} needs --redis-url" in capsys.readouterr().err
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")  # the conventional variable, as compose sets it
    assert parse_args(["--role", "worker"]).redis_url == "redis://redis:6379/0"
    assert parse_args(["--role", "api", "--redis-url", "redis://other:6380/1"]).redis_url == "redis://other:6380/1"
    # Running jobs share the model segment by segment in both modes: many run at once by default.
    assert (parse_args([]).concurrent_jobs, parse_args(["--role", "api"]).concurrent_jobs) == (32, 32)
    assert parse_args(["--role", "api", "--concurrent-jobs", "4"]).concurrent_jobs == 4


def test_keys_come_from_the_flag_the_key_file_and_the_admin_flag(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\n\n  alpha  \nbeta\n   # an indented comment\ngam#ma\n")
    s = parse_args(["--api-key", "one, two", "--api-key-file", str(keys), "--admin-key", "root1,root2"])
    assert s.user_keys == ["one", "two", "alpha", "beta", "gam#ma"]  # only whole-line comments
    assert s.admin_keys == ["root1", "root2"]
    assert s.api_keys == s.user_keys + s.admin_keys
    monkeypatch.setenv("QWEN_OMNI_API_KEY_FILE", str(keys))
    monkeypatch.setenv("QWEN_OMNI_ADMIN_KEY", "root")
    s = parse_args([])
    assert (s.user_keys, s.admin_keys) == (["alpha", "beta", "gam#ma"], ["root"])


def test_blank_key_settings_mean_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEY", "API_KEY_FILE", "ADMIN_KEY"):
        monkeypatch.setenv(f"QWEN_OMNI_{name}", "  ")  # as a compose file passes an unset variable
    s = parse_args([])
    assert (s.api_key_file, s.user_keys, s.admin_keys, s.api_keys) == (None, [], [], [])
    assert parse_args(["--admin-key", "root"]).api_keys == ["root"]  # an admin key alone requires keys


@pytest.mark.parametrize(("content", "problem"), [(None, "cannot read the key file"),
                                                  ("\n# only comments\n\n", "holds no key"),
                                                  (b"\xff\xfe\x00k", "cannot read the key file")])
def test_a_bad_key_file_stops_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        content: str | bytes | None, problem: str) -> None:
    keys = tmp_path / "keys.txt"
    if isinstance(content, bytes):
        keys.write_bytes(content)
    elif content is not None:
        keys.write_text(content)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--api-key-file", str(keys)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--api-key-file" in err and problem in err and str(keys) in err


def test_an_unreadable_key_file_stops_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--api-key-file", str(tmp_path)])  # a folder, not a file
    assert "cannot read the key file" in capsys.readouterr().err


def test_the_served_model_is_named_by_its_folder_never_its_path() -> None:
    from serve.routes.openai import served_model_name

    assert served_model_name(parse_args(["--checkpoint-path", "Qwen/Qwen2.5-Omni-7B-AWQ"])) == "Qwen2.5-Omni-7B-AWQ"
    assert served_model_name(parse_args(["--checkpoint-path", "/home/me/models/omni-awq/"])) == "omni-awq"
    named = parse_args(["--checkpoint-path", "/app/Qwen/x", "--served-model-name", "qwen-asr"])
    assert served_model_name(named) == "qwen-asr"
