"""The page at / in a real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
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
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
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


@contextmanager
def browser_context(browser, server: Server, locale: str = "en-US") -> Iterator:  # type: ignore[no-untyped-def]
    """A fresh browser profile (its own localStorage) whose language is ``locale``."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 900}, locale=locale)
    requested: list[str] = []
    context.on("request", lambda r: requested.append(r.url))
    yield context
    # Everything the page loaded came from the server itself (or is the browser's own copy of a file: blob:),
    # no CDN: it works offline.
    assert requested and all(url.removeprefix("blob:").startswith(server.url) for url in requested), requested
    context.close()


def open_page(context, server: Server):  # type: ignore[no-untyped-def]
    page = context.new_page()
    page.goto(server.url)
    return page


@pytest.fixture
def page(browser, server: Server) -> Iterator:  # type: ignore[no-untyped-def]
    with browser_context(browser, server) as context:
        yield open_page(context, server)


def transcribe_through_the_page(page, audio: Path, language: str = "en",  # type: ignore[no-untyped-def]
                                segment: int = 1) -> None:
    page.fill("#apikey", KEY)
    page.set_input_files("#file", str(audio))
    assert audio.name in page.inner_text("#chosen")
    page.select_option("#language", language)
    page.fill("#segment", str(segment))
    page.click("#start")


def test_pick_a_file_watch_it_grow_and_download_every_format(page, server: Server, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                              tmp_path: Path) -> None:
    page.wait_for_function("document.getElementById('health').textContent !== 'checking…'")
    transcribe_through_the_page(page, audio_dir / "long_tone.wav")
    # While it runs: a moving progress bar and the transcript so far.
    page.wait_for_function("document.getElementById('state').textContent.startsWith('transcribing')", timeout=30000)
    page.wait_for_function("document.getElementById('transcript').textContent.length > 0", timeout=30000)
    # Another tab reopens the running job from its list: the same progress bar and text so far.
    other = open_page(page.context, server)
    other.click("#jobs li:first-child button")
    other.wait_for_selector("#job[data-phase=running], #job[data-phase=done]")
    reopened_while = other.get_attribute("#job", "data-phase")
    other.wait_for_function("document.getElementById('transcript').textContent.length > 0")
    assert other.get_attribute("#bar", "max") == "25" and 0 < float(other.get_attribute("#bar", "value")) <= 25
    if reopened_while == "done":  # a busy machine may finish the 25 segments first: then it is shown whole
        other.wait_for_selector("#downloads:not([hidden])")
    other.close()
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
    # The transcript as the page shows it: one line per spoken segment, with its times.
    assert shown_segments(page) == [(f"{clock(s['start'])}–{clock(s['end'])}", s["text"]) for s in spoken]

    page.click(f"#segments .segment >> nth={min(2, len(spoken) - 1)}")  # a highlighted line in the picture
    screenshot = os.environ.get("QWEN_OMNI_SCREENSHOT")  # set to regenerate docs/web-page.png
    if screenshot:
        page.evaluate("document.getElementById('player').pause()")
        page.screenshot(path=screenshot, full_page=True)


def test_drop_a_file_to_translate(page, server: Server, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page.fill("#apikey", KEY)
    data = base64.b64encode((audio_dir / "speech.wav").read_bytes()).decode()
    page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped speech.wav", { type: "audio/wav" }));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer }));
    }""", data)
    assert "dropped speech.wav" in page.inner_text("#chosen")
    page.wait_for_function("document.getElementById('health').textContent !== 'checking…'")
    assert page.is_visible("#task")  # Qwen2.5-Omni translates: the page offers it
    page.select_option("#task", "zh")
    page.click("#start")
    page.wait_for_function("document.getElementById('state').textContent.startsWith('done')", timeout=60000)
    assert page.inner_text("#transcript").strip()
    job = requests.get(f"{server.url}/jobs", headers={"X-API-Key": KEY}, timeout=5).json()["jobs"][0]
    result = requests.get(f"{server.url}/result/{job['job_id']}", params={"format": "json"},
                          headers={"X-API-Key": KEY}, timeout=5).json()
    assert job["filename"] == "dropped speech.wav"
    assert (result["task"], result["target_language"], result["language"]) == ("translate", "zh", "zh")


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
    for static in (ROOT / "serve" / "web" / "static").iterdir():  # no external resources
        source = static.read_text(encoding="utf-8")
        assert "http://" not in source and "https://" not in source, static


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


def clock(seconds: float) -> str:
    """The page's m:ss.s (h:mm:ss.s from an hour)."""
    tenths = int(seconds * 10 + 1e-6)
    whole = tenths // 10
    hours, minutes = divmod(whole // 60, 60)
    second = f"{whole % 60:02d}.{tenths % 10}"
    return f"{hours}:{minutes:02d}:{second}" if hours else f"{minutes}:{second}"


def shown_segments(page) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [tuple(row) for row in page.eval_on_selector_all(
        "#segments .segment", "rows => rows.map(r => [r.querySelector('.times').textContent, "
                              "r.querySelector('.text').textContent])")]


# Per browser locale: the page's language, and words it must show in it (independent of i18n.js).
LOCALES = {
    "en-US": {"lang": "en", "start": "Transcribe", "recent": "Recent jobs", "done": "done: ",
              "download": "Download .srt", "completed": "completed", "other": "zh-Hant", "other_start": "開始轉錄"},
    "zh-TW": {"lang": "zh-Hant", "start": "開始轉錄", "recent": "最近的工作", "done": "完成：",
              "download": "下載 .srt", "completed": "已完成", "other": "en", "other_start": "Transcribe"},
    "zh-CN": {"lang": "zh-Hans", "start": "开始转录", "recent": "最近的任务", "done": "完成：",
              "download": "下载 .srt", "completed": "已完成", "other": "zh-Hant", "other_start": "開始轉錄"},
}
# Latin words a Chinese page may show: formats, names, codes.
KEPT_LATIN = {"Qwen2.5", "Omni", "MP3", "WAV", "M4A", "FLAC", "OGG", "MP4", "API", "yue", "s2t", "s2tw", "s2twp",
              "s2hk", "t2s", "txt", "srt", "vtt", "json", "English", "HTTP"}

STATIC_TEXT = """() => {
    const texts = [document.title, document.querySelector('header').textContent,
                   document.getElementById('upload').textContent, document.getElementById('job').textContent,
                   document.getElementById('recent').textContent];
    document.querySelectorAll('[placeholder], [title], [aria-label]').forEach((e) =>
        texts.push(e.getAttribute('placeholder') || '', e.getAttribute('title') || '',
                   e.getAttribute('aria-label') || ''));
    return texts.join(' ');
}"""


def assert_in_language(page, locale: str) -> None:  # type: ignore[no-untyped-def]
    expected = LOCALES[locale]
    assert page.get_attribute("html", "lang") == expected["lang"]
    assert page.input_value("#ui-language") == expected["lang"]
    assert page.inner_text("#start") == expected["start"]
    assert page.inner_text("#recent-title") == expected["recent"]
    if expected["lang"] != "en":  # nothing left in English (the language switch names itself)
        text = page.evaluate(STATIC_TEXT).replace("English", "")
        assert set(re.findall(r"[A-Za-z][A-Za-z0-9.]{2,}", text)) <= KEPT_LATIN, text
        # every string has its translation (error messages too, which this test cannot all provoke)
        assert page.evaluate(f"Object.keys(STRINGS.en).filter((k) => !(k in STRINGS['{expected['lang']}']))") == []


@pytest.mark.parametrize("locale", LOCALES)
def test_the_page_in_each_language(browser, server: Server, audio_dir: Path, locale: str) -> None:  # type: ignore[no-untyped-def]
    """The browser's language picks the page's; a file is transcribed through it; its transcript plays by
    segment; the job is listed and reopens; a chosen language is remembered."""
    expected = LOCALES[locale]
    with browser_context(browser, server, locale) as context:
        page = open_page(context, server)
        assert_in_language(page, locale)
        transcribe_through_the_page(page, audio_dir / "speech.wav", segment=2)
        page.wait_for_selector("#job[data-phase=done]", timeout=60000)
        assert page.inner_text("#state").startswith(expected["done"])
        assert page.inner_text("#downloads button[data-format=srt]") == expected["download"]
        job_id = page.get_attribute("#jobs li[aria-current]", "data-job")
        assert page.inner_text(f"#jobs li[data-job='{job_id}'] .job-status") == expected["completed"]

        result = requests.get(f"{server.url}/result/{job_id}", headers={"X-API-Key": KEY}, timeout=5).json()
        segments = result["segments"]
        assert segments, result  # random weights may leave a segment blank, not all of them
        assert shown_segments(page) == [(f"{clock(s['start'])}–{clock(s['end'])}", s["text"])
                                        for s in segments]
        check_playing_by_segment(page, segments)
        check_reopened(context, server, job_id, len(segments), expected)


def test_the_browser_language_picks_the_page_language(page) -> None:  # type: ignore[no-untyped-def]
    picked = page.evaluate("""(tags) => tags.map((t) => I18N.pick(t))""", [
        ["zh-TW"], ["zh-HK"], ["zh-MO"], ["zh-Hant"], ["zh-Hant-CN"], ["zh-CN"], ["zh-SG"], ["zh-Hans"],
        ["zh-Hans-HK"], ["zh"], ["en-GB"], ["fr-FR"], [], ["fr", "zh-TW", "en"], ["de", "en-US", "zh-CN"]])
    assert picked == ["zh-Hant"] * 5 + ["zh-Hans"] * 5 + ["en"] * 3 + ["zh-Hant", "en"]


def check_playing_by_segment(page, segments: list[dict]) -> None:  # type: ignore[no-untyped-def]
    """The browser's own copy of the file plays; a click on a segment seeks there; playback highlights."""
    assert page.get_attribute("#player", "src").startswith("blob:")  # not uploaded, not downloaded again
    page.wait_for_function("document.getElementById('player').readyState >= 1")
    last = len(segments) - 1
    page.click(f"#segments .segment >> nth={last}")
    at = page.evaluate("document.getElementById('player').currentTime")
    assert segments[last]["start"] - 0.01 <= at < segments[last]["start"] + 1.0
    assert page.get_attribute(f"#segments .segment >> nth={last}", "aria-current") == "true"
    # As it plays (here: a position set, as timeupdate reports it), the segment under it is highlighted.
    middle = (segments[0]["start"] + segments[0]["end"]) / 2
    page.evaluate(f"""() => {{
        const player = document.getElementById('player');
        player.pause();
        highlight(-1);  // none, whatever the click left
        player.currentTime = {middle};
    }}""")
    page.wait_for_selector("#segments .segment.playing[data-index='0'][aria-current=true]")
    assert page.locator("#segments .segment.playing").count() == 1


def check_reopened(context, server: Server, job_id: str, count: int, expected: dict) -> None:  # type: ignore[no-untyped-def]
    """Another tab lists the job (from GET /jobs with the remembered key, or, refused, from this browser's
    own list) and reopens it: its transcript and downloads, no player (the file is not in this tab)."""
    page = open_page(context, server)
    page.click(f"#jobs li[data-job='{job_id}'] button")
    page.wait_for_selector("#job[data-phase=done]")
    assert page.locator("#segments .segment").count() == count and page.is_hidden("#player")
    with page.expect_download() as download:
        page.click("#downloads button[data-format=txt]")
    assert download.value.suggested_filename == "speech.txt"

    refused = '{"status": "error", "error": "a valid API key is required", "code": "unauthorized"}'
    page.route("**/jobs?*", lambda route: route.fulfill(status=401, content_type="application/json", body=refused))
    page.click("#refresh")
    page.wait_for_function("document.getElementById('recent-source').dataset.i18n === 'recent.from_browser'")
    assert page.locator(f"#jobs li[data-job='{job_id}']").count() == 1

    page.select_option("#ui-language", expected["other"])  # switched, and remembered over the browser's
    assert page.inner_text("#start") == expected["other_start"]
    page.reload()
    assert page.get_attribute("html", "lang") == expected["other"]
    assert page.inner_text("#start") == expected["other_start"]
