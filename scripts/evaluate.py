#!/usr/bin/env python3
"""WER/CER of the server (or the engine directly) on a manifest of audio files and reference transcripts.

    # a running server (any of ours: one process, or the scale-out API)
    .venv/bin/python scripts/evaluate.py manifest.jsonl --server http://localhost:5000
    # in this process, through the production loader (server flags after --)
    .venv/bin/python scripts/evaluate.py manifest.csv -- --checkpoint-path Qwen/Qwen2.5-Omni-7B-AWQ --local-model
    # LibriSpeech as downloaded (a folder such as LibriSpeech/test-clean; the manifest is built from it)
    .venv/bin/python scripts/evaluate.py --librispeech data/LibriSpeech/test-clean --server http://localhost:5000

Manifest: CSV with a header, or JSONL; fields ``audio`` (a path, relative to the manifest's folder or
absolute), ``text`` (the reference) and optionally ``language`` (``en``, ``zh``, ...: told to the model and used
for scoring; without it the model detects the language and the reference is scored as ``zh`` when written in
Chinese characters, else as ``en``). English is normalized as the published Qwen results
are (Whisper's English normalizer), other languages with Whisper's basic normalizer; Chinese is folded to
Simplified and scored by characters (CER), the others by words (WER). Prints a per-file table, then the
corpus-level WER and CER (all errors over all reference tokens), total audio duration and real-time factor.
A file that fails is reported and left out of the figures, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serve.evaluation import Score, corpus_rate, guess_language, score  # noqa: E402
from serve.languages import ALL_LANGUAGES  # noqa: E402

SERVER_TIMEOUT_SECONDS = 3600


@dataclass(frozen=True)
class Item:
    audio: Path
    reference: str
    language: str  # how the transcript is scored
    requested: str = "auto"  # what the model is told: the manifest's language, else it detects it itself


@dataclass
class Row:
    file: str
    language: str
    audio_seconds: float
    seconds: float
    errors: int
    reference_length: int
    rate: float
    metric: str  # "WER" or "CER"
    reference: str
    hypothesis: str


def read_manifest(path: Path) -> list[Item]:
    """Items of a CSV (with a header) or JSONL manifest; audio paths resolved against its folder."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        records = json.loads(text)
    elif path.suffix.lower() == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = list(csv.DictReader(io.StringIO(text)))
    items = []
    for number, record in enumerate(records, 1):
        audio = record.get("audio") or record.get("path")
        reference = record.get("text") if record.get("text") is not None else record.get("reference")
        if not audio or reference is None:
            raise SystemExit(f"{path}: entry {number} needs 'audio' and 'text' (got {sorted(record)})")
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        items.append(item(audio_path, reference, record.get("language"), f"{path}: entry {number}"))
    return items


def item(audio: Path, reference: str, language: str | None, where: str) -> Item:
    """An item told ``language`` (any case; empty or 'auto': the model detects it and the reference's script
    decides how it is scored)."""
    requested = (language or "").strip().lower() or "auto"
    if requested != "auto" and requested not in ALL_LANGUAGES:
        raise SystemExit(f"{where}: unknown language {language!r}; one of auto, {', '.join(ALL_LANGUAGES)}")
    return Item(audio, reference, guess_language(reference) if requested == "auto" else requested, requested)


def librispeech(folder: Path) -> list[Item]:
    """Items of a LibriSpeech split as downloaded: <speaker>/<chapter>/<id>.flac and <speaker>-<chapter>.trans.txt."""
    items = []
    for transcript in sorted(folder.rglob("*.trans.txt")):
        for line in transcript.read_text().splitlines():
            utterance, _, reference = line.partition(" ")
            if utterance:
                items.append(Item(transcript.parent / f"{utterance}.flac", reference, "en", "en"))
    if not items:
        raise SystemExit(f"no *.trans.txt under {folder}: point --librispeech at e.g. LibriSpeech/test-clean")
    return items


class ServerBackend:
    """POST /transcribe/json on a running server."""

    def __init__(self, url: str, api_key: str | None, temperature: str) -> None:
        import requests

        self.url = url.rstrip("/")
        self.temperature = temperature
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def transcribe(self, item: Item) -> tuple[str, float, float]:
        started = time.monotonic()
        with item.audio.open("rb") as audio:
            response = self.session.post(f"{self.url}/transcribe/json", files={"file": (item.audio.name, audio)},
                                         data={"language": item.requested, "temperature": self.temperature},
                                         timeout=SERVER_TIMEOUT_SECONDS)
        if response.status_code != 200:
            try:
                reason = response.json().get("error")
            except ValueError:
                reason = response.text[:200]
            raise RuntimeError(f"the server answered HTTP {response.status_code}: {reason}")
        body = response.json()
        return body["transcription"], float(body.get("duration") or 0.0), time.monotonic() - started

    def close(self) -> None:
        self.session.close()


class EngineBackend:
    """The production loader and pipeline in this process."""

    def __init__(self, server_flags: list[str], scratch: Path, temperature: str) -> None:
        from serve.config import parse_args
        from serve.direct import DirectTranscriber

        self.temperature = temperature
        self.transcriber = DirectTranscriber(parse_args(server_flags), scratch)
        load_seconds = self.transcriber.load()
        print(f"model loaded in {load_seconds:.1f} s", file=sys.stderr, flush=True)

    def transcribe(self, item: Item) -> tuple[str, float, float]:
        result = self.transcriber.transcribe(item.audio, item.requested, temperature=self.temperature)
        return result.text, result.audio_seconds, result.seconds

    def close(self) -> None:
        self.transcriber.close()


def evaluate(items: list[Item], backend: ServerBackend | EngineBackend,
             failures: list[dict]) -> Iterator[tuple[Row, Score]]:
    """Rows of the files transcribed; a file that fails is reported, recorded in ``failures`` and skipped."""
    for item in items:
        try:
            hypothesis, audio_seconds, seconds = backend.transcribe(item)
        except Exception as exc:  # one bad file must not lose the rows of the others
            failures.append({"file": str(item.audio), "error": f"{type(exc).__name__}: {exc}"})
            print(f"{item.audio}: FAILED, {exc}", file=sys.stderr, flush=True)
            continue
        result = score(item.reference, hypothesis, item.language)
        yield Row(file=str(item.audio), language=item.language, audio_seconds=round(audio_seconds, 2),
                  seconds=round(seconds, 2), errors=result.errors, reference_length=result.reference_length,
                  rate=round(result.rate, 4), metric="CER" if result.characters else "WER",
                  reference=item.reference, hypothesis=hypothesis), result


def summarize(rows: list[Row], scores: list[Score]) -> dict:
    words = [s for s in scores if not s.characters]
    characters = [s for s in scores if s.characters]
    audio = sum(r.audio_seconds for r in rows)
    seconds = sum(r.seconds for r in rows)
    wer, cer = corpus_rate(words), corpus_rate(characters)
    return {"files": len(rows), "wer": None if wer is None else round(wer, 4),
            "wer_files": len(words), "cer": None if cer is None else round(cer, 4), "cer_files": len(characters),
            "audio_seconds": round(audio, 2), "seconds": round(seconds, 2),
            "real_time_factor": round(seconds / audio, 4) if audio else None}


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.2f}%"


def print_row(row: Row) -> None:
    name = row.file if len(row.file) <= 48 else "..." + row.file[-45:]
    print(f"{name:<48} {row.language:>4} {row.audio_seconds:>8.2f} {row.seconds:>8.2f} "
          f"{row.metric} {percent(row.rate):>8} ({row.errors}/{row.reference_length})", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    server_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage="%(prog)s (MANIFEST | "
                                     "--librispeech DIR) [--server URL | -- SERVER FLAGS...] [options]",
                                     epilog="Without --server, the flags after -- configure the engine exactly as "
                                     "they configure the server (see serve/qwen2_5_omni_awq.py --help).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("manifest", nargs="?", type=Path, help="CSV or JSONL: audio, text[, language]")
    source.add_argument("--librispeech", type=Path, help="a LibriSpeech split folder (e.g. test-clean)")
    parser.add_argument("--server", help="a running server's URL; without it, the engine runs in this process")
    parser.add_argument("--api-key", help="for a server started with --api-key")
    parser.add_argument("--language", help="every item's language, told to the model and used for scoring (e.g. "
                                           "en, zh); by default the manifest's, else the model detects it")
    parser.add_argument("--temperature", default="0", help="sent with every file (default 0: greedy decoding, as "
                                                           "published results are computed, and repeatable)")
    parser.add_argument("--limit", type=int, help="only the first N items")
    parser.add_argument("--json", type=Path, help="write the per-file rows and the summary here")
    args = parser.parse_args(argv)
    if args.server and server_flags:
        parser.error("server flags (after --) configure the in-process engine: not with --server")
    items = librispeech(args.librispeech) if args.librispeech else read_manifest(args.manifest)
    if args.language:
        items = [item(i.audio, i.reference, args.language, "--language") for i in items]
    items = items if args.limit is None else items[: args.limit]
    missing = [str(i.audio) for i in items if not i.audio.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} audio file(s) not found, e.g. {missing[0]}")

    rows: list[Row] = []
    scores: list[Score] = []
    failures: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        backend = (ServerBackend(args.server, args.api_key, args.temperature) if args.server
                   else EngineBackend(server_flags, Path(scratch), args.temperature))
        try:
            print(f"{'file':<48} {'lang':>4} {'audio s':>8} {'time s':>8} rate", flush=True)
            for row, result in evaluate(items, backend, failures):
                rows.append(row)
                scores.append(result)
                print_row(row)
        finally:
            backend.close()
    summary = summarize(rows, scores)
    print(f"\nWER {percent(summary['wer'])} over {summary['wer_files']} file(s), CER {percent(summary['cer'])} over "
          f"{summary['cer_files']} file(s); {summary['audio_seconds']:.1f} s of audio in {summary['seconds']:.1f} s, "
          f"real-time factor {summary['real_time_factor']}")
    if failures:
        print(f"{len(failures)} file(s) failed and are not in the figures", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": [asdict(r) for r in rows], "failures": failures},
                                        indent=2, ensure_ascii=False) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
