"""Every bad input a client can send, over real HTTP: the right status with a JSON message (never a 500 or
a traceback), the server still healthy, and nothing left behind in inputs/ or temp/."""

from __future__ import annotations

import http.client
import io
import json
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import requests

from tests.conftest import folder_is_empty
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import Server

pytestmark = pytest.mark.e2e

LIMIT_MB = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path) -> Iterator[Server]:
    with tiny_server(tmp_path_factory.mktemp("bad-input"), tiny_awq_checkpoint, "--max-upload-size",
                     f"{LIMIT_MB}M") as server:
        yield server
    assert "Traceback" not in server.log.read_text()


def pcm_wav(seconds: float, amplitude: float = 0.3) -> bytes:
    """A 16 kHz mono 16-bit WAV of a 440 Hz tone (or of silence, with amplitude 0)."""
    samples = amplitude * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16000)) / 16000) * 32767
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def samples(audio_dir: Path) -> dict[str, bytes]:
    mp3 = (audio_dir / "speech.mp3").read_bytes()
    broken = bytearray((audio_dir / "speech.wav").read_bytes())
    broken[:44] = b"\xff" * 44
    return {
        "mp3": mp3,
        "truncated_mp3": mp3[: len(mp3) // 3],
        "broken_wav_header": bytes(broken),
        "text_as_mp3": b"this is a text file, not audio\n" * 40,
        "tenth_of_a_second": pcm_wav(0.1),
        "silence": pcm_wav(3.0, amplitude=0.0),
    }


@dataclass
class Case:
    name: str
    status: int
    code: str | None = None
    file: str | None = "mp3"
    filename: str = "audio.mp3"
    fields: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = "/transcribe/json"
    check: Callable[[requests.Response], None] | None = None


def download_named(expected: str) -> Callable[[requests.Response], None]:
    def check(response: requests.Response) -> None:
        header = response.headers["Content-Disposition"]
        name = unquote(header.split("filename*=UTF-8''", 1)[1]) if "filename*=" in header else \
            header.split('filename="', 1)[1].rstrip('"')
        assert name == expected

    return check


def empty_transcript(response: requests.Response) -> None:
    assert response.json()["transcription"] == ""


NUMERIC = {"segment_duration": ("abc", "0", "-10", "1e12"), "max_new_tokens": ("many", "0", "-5", "99999999"),
           "temperature": ("warm", None, "-0.5", "1e9"), "repetition_penalty": ("x", "0", "-1", "1e9")}

CASES = [
    Case("missing file", 400, "missing_file", file=None),
    Case("file sent as a plain field", 400, "missing_file", file=None, fields={"file": "audio.mp3"}),
    Case("file under another field name", 400, "missing_file", file=None, fields={}),
    Case("empty file", 400, "empty_file", file="empty"),
    Case("text renamed .mp3", 415, "unsupported_media", file="text_as_mp3"),
    Case("WAV with a broken header", 415, "unsupported_media", file="broken_wav_header", filename="audio.wav"),
    Case("truncated MP3", 200, file="truncated_mp3"),
    Case("0.1 s of audio", 200, file="tenth_of_a_second", filename="short.wav"),
    Case("pure silence", 200, file="silence", filename="silence.wav", check=empty_transcript),
    Case("temperature 0 is greedy, not an error", 200, fields={"temperature": "0"}),
    *[Case(f"{param}={value}", 400, "invalid_parameter", fields={param: value})
      for param, values in NUMERIC.items() for value in values if value is not None],
    Case("enable_s2t=maybe", 400, "invalid_parameter", fields={"enable_s2t": "maybe"}),
    Case("enable_s2t=2", 400, "invalid_parameter", fields={"enable_s2t": "2"}),
    Case("path traversal in the file name", 200, filename="../../etc/x.mp3", path="/transcribe",
         check=download_named("x.txt")),
    Case("300-character file name", 200, filename="n" * 300 + ".mp3", path="/transcribe",
         check=download_named("n" * 196 + ".txt")),
    Case("Unicode file name", 200, filename="會議錄音 第1部分 🎤.mp3", path="/transcribe",
         check=download_named("會議錄音 第1部分 🎤.txt")),
    Case("wrong method", 405, "method_not_allowed", file=None, method="GET"),
    Case("PUT on health", 405, "method_not_allowed", file=None, method="PUT", path="/health"),
    Case("unknown route", 404, "not_found", file=None, method="GET", path="/transcribe/xml"),
    Case("unknown job id", 404, "not_found", file=None, method="GET", path="/status/0123456789abcdef"),
    Case("cancel an unknown job", 404, "not_found", file=None, method="DELETE", path="/jobs/nope"),
    Case("SRT of text renamed .mp3", 415, "unsupported_media", file="text_as_mp3", path="/transcribe/srt"),
    Case("async of an empty file", 400, "empty_file", file="empty", path="/transcribe/async"),
]


def assert_clean(server: Server) -> None:
    assert requests.get(f"{server.url}/health", timeout=5).json()["status"] == "ok"
    assert folder_is_empty(server.root / "inputs"), list((server.root / "inputs").iterdir())
    assert folder_is_empty(server.root / "temp"), list((server.root / "temp").iterdir())


def test_the_matrix_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(server: Server, samples: dict[str, bytes], case: Case) -> None:
    files = None
    if case.file == "empty":
        files = {"file": (case.filename, b"")}
    elif case.file is not None:
        files = {"file": (case.filename, samples[case.file])}
    elif case.name == "file under another field name":
        files = {"audio": (case.filename, samples["mp3"])}
    response = requests.request(case.method, f"{server.url}{case.path}", files=files, data=case.fields,
                                timeout=120)
    assert response.status_code == case.status, response.text
    assert "Traceback" not in response.text
    if case.status >= 400:
        body = response.json()
        assert body["status"] == "error" and body["error"] and body["code"] == case.code
    if case.check:
        case.check(response)
    assert_clean(server)


def multipart_chunks(size: int, boundary: str = "bound4ry") -> Iterator[bytes]:
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
           "Content-Type: audio/wav\r\n\r\n").encode()
    chunk = b"\0" * 65536
    for _ in range(size // len(chunk)):
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_over_the_size_limit_is_413_without_buffering(server: Server, chunked: bool) -> None:
    size = (LIMIT_MB + 1) * 1024 * 1024
    url = urlparse(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = {"Content-Type": "multipart/form-data; boundary=bound4ry"}
    body: bytes | Iterator[bytes]
    if chunked:
        body = multipart_chunks(size)
        headers["Transfer-Encoding"] = "chunked"
    else:
        body = b"".join(multipart_chunks(size))
    try:
        connection.request("POST", "/transcribe/json", body=body, headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        status, payload = response.status, response.read()
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the server closed the connection without answering 413")
    finally:
        connection.close()
    assert status == 413
    body_json = json.loads(payload)
    assert body_json["code"] == "payload_too_large" and f"{LIMIT_MB} MiB" in body_json["error"]
    assert_clean(server)
