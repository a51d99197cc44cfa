"""The page at / in a real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import srt

from tests.conftest import ROOT
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import Server

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# Without these, Chromium phones home at start and this machine's closed network refuses it, noisily.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "page-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path) -> Iterator[Server]:
    with tiny_server(tmp_path_factory.mktemp("web"), tiny_awq_checkpoint, "--api-key", KEY) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server: Server) -> Iterator:  # type: ignore[no-untyped-def]
    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server.url)
    yield page
    # Everything the page loaded came from the server itself: no CDN, works offline.
    assert requested and all(url.startswith(server.url) for url in requested), requested
    context.close()


def transcribe_through_the_page(page, audio: Path, language: str = "en") -> None:  # type: ignore[no-untyped-def]
    page.fill("#apikey", KEY)
    page.set_input_files("#file", str(audio))
    assert audio.name in page.inner_text("#chosen")
    page.select_option("#language", language)
    page.fill("#segment", "1")
    page.click("#start")


def test_pick_a_file_watch_it_grow_and_download_every_format(page, server: Server, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                              tmp_path: Path) -> None:
    page.wait_for_function("document.getElementById('health').textContent !== 'checking…'")
    transcribe_through_the_page(page, audio_dir / "long_tone.wav")
    # While it runs: a moving progress bar and the transcript so far.
    page.wait_for_function("document.getElementById('state').textContent.startsWith('transcribing')", timeout=30000)
    page.wait_for_function("document.getElementById('transcript').textContent.length > 0", timeout=30000)
    page.wait_for_function("document.getElementById('state').textContent.startsWith('done')", timeout=120000)
    assert page.get_attribute("#bar", "value") == page.get_attribute("#bar", "max") == "25"
    shown = page.text_content("#transcript")  # the text as set, not as laid out
    assert shown.strip()

    files = {}
    for fmt in ("txt", "srt", "vtt", "json"):
        with page.expect_download() as download:
            page.click(f"#downloads button[data-format={fmt}]")
        files[fmt] = tmp_path / download.value.suggested_filename
        download.value.save_as(files[fmt])
    assert sorted(p.name for p in files.values()) == ["long_tone.json", "long_tone.srt", "long_tone.txt",
                                                     "long_tone.vtt"]
    assert files["txt"].read_text(encoding="utf-8").strip() == shown.strip()
    # Random weights can leave a segment blank, and a blank segment makes no cue: every spoken one must have one.
    spoken = json.loads(files["json"].read_text(encoding="utf-8"))["segments"]
    cues = list(srt.parse(files["srt"].read_text(encoding="utf-8")))
    assert spoken and len(cues) >= len(spoken)
    assert {round(s["start"]) for s in spoken} <= {round(c.start.total_seconds()) for c in cues}
    assert files["vtt"].read_text(encoding="utf-8").startswith("WEBVTT")
    jobs = requests.get(f"{server.url}/jobs", headers={"X-API-Key": KEY}, timeout=5).json()["jobs"]
    assert jobs[0]["status"] == "completed" and jobs[0]["filename"] == "long_tone.wav"

    screenshot = os.environ.get("QWEN_OMNI_SCREENSHOT")  # set to regenerate docs/web-page.png
    page.screenshot(path=screenshot or str(tmp_path / "page.png"), full_page=True)


def test_drop_a_file(page, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page.fill("#apikey", KEY)
    data = base64.b64encode((audio_dir / "speech.wav").read_bytes()).decode()
    page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped speech.wav", { type: "audio/wav" }));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer }));
    }""", data)
    assert "dropped speech.wav" in page.inner_text("#chosen")
    page.click("#start")
    page.wait_for_function("document.getElementById('state').textContent.startsWith('done')", timeout=60000)
    assert page.inner_text("#transcript").strip()


def test_a_wrong_key_and_a_bad_file_are_shown_as_errors(page, tmp_path: Path, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page.fill("#apikey", "wrong")
    page.set_input_files("#file", str(audio_dir / "speech.wav"))
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])")
    assert "API key" in page.inner_text("#error")

    notes = tmp_path / "notes.mp3"
    notes.write_text("not audio\n" * 50)
    page.fill("#apikey", KEY)
    page.set_input_files("#file", str(notes))
    page.click("#start")
    page.wait_for_function("document.getElementById('error').textContent.includes('decoded')")
    assert page.inner_text("#state") == "failed"


def test_the_page_needs_no_key_to_load_but_the_api_does(server: Server) -> None:
    assert requests.get(server.url, timeout=5).status_code == 200
    assert requests.get(f"{server.url}/static/app.js", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/jobs", timeout=5).status_code == 401
    page_source = (ROOT / "serve" / "web" / "static" / "index.html").read_text()
    assert "http://" not in page_source and "https://" not in page_source  # no external resources


def test_a_server_outage_while_polling_is_waited_out(page, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The first status polls meet a 503 (as while a scale-out API's Redis restarts), then the real server."""
    refused = []

    def unavailable_twice(route) -> None:  # type: ignore[no-untyped-def]
        if len(refused) < 2:
            refused.append(route.request.url)
            route.fulfill(status=503, headers={"Retry-After": "5"}, content_type="application/json",
                          body='{"status": "error", "error": "the job store (Redis) is unavailable; retry shortly", '
                               '"code": "store_unavailable"}')
        else:
            route.continue_()

    page.route("**/status/*", unavailable_twice)
    transcribe_through_the_page(page, audio_dir / "speech.wav")
    page.wait_for_function("document.getElementById('state').textContent.startsWith('waiting for the server')",
                           timeout=10000)
    page.wait_for_function("document.getElementById('state').textContent.startsWith('done')", timeout=60000)
    assert len(refused) == 2 and page.is_hidden("#error")
