"""Uploads: streamed straight into inputs/ (never held in memory), owned by one request or job, always removed."""

from __future__ import annotations

import re
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote

from anyascii import anyascii
from flask import Request, current_app

from .errors import EmptyFile, MissingFile

UPLOAD_DIR_KEY = "QWEN_OMNI_INPUTS_DIR"
_MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class Upload:
    path: Path  # the file under inputs/; whoever holds the Upload must delete it
    filename: str  # the client's file name, made safe for display and Content-Disposition
    size: int


def display_filename(raw: str | None) -> str:
    """The client's file name without directories, control characters or excessive length."""
    name = PurePosixPath((raw or "").replace("\\", "/")).name
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if len(name) > _MAX_NAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:16] if dot else ""
        name = (stem if dot else name)[: _MAX_NAME_LENGTH - len(ext) - 1] + (f".{ext}" if ext else "")
    return name or "audio"


def download_name(filename: str, extension: str) -> str:
    """``audio.mp3`` -> ``audio.txt``: the transcript is named after the upload."""
    stem = PurePosixPath(filename).stem if "." in filename.strip(".") else filename
    return f"{stem or 'audio'}.{extension}"


def content_disposition(filename: str) -> str:
    """An RFC 6266 attachment header: the UTF-8 name in ``filename*``, an ASCII stand-in in ``filename``.

    The stand-in is what ``curl -OJ`` and older clients save: a transliteration (``會議記錄 2025.txt`` ->
    ``HuiYiJiLu 2025.txt``), so that it stays recognisable and different names stay different, where
    dropping the non-ASCII characters left ``2025.txt`` for every such file."""
    ascii_name = anyascii(unicodedata.normalize("NFC", filename))
    ascii_name = re.sub(r'[^A-Za-z0-9._ -]', "_", ascii_name).strip()
    stem, dot, ext = ascii_name.rpartition(".")
    if not dot or not stem.strip("._ "):
        ascii_name = "transcript" + (f".{ext}" if dot else "")
    header = f'attachment; filename="{ascii_name}"'
    if ascii_name != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header


def _safe_suffix(filename: str | None) -> str:
    ext = PurePosixPath(display_filename(filename)).suffix.lower()
    # The extension helps ffmpeg recognise headerless formats (raw AAC, ADTS); keep it if it is plain.
    return ext if re.fullmatch(r"\.[a-z0-9]{1,10}", ext) else ""


class UploadRequest(Request):
    """A Flask request whose multipart file parts stream into inputs/ instead of memory or /tmp."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        directory = Path(current_app.config[UPLOAD_DIR_KEY])
        directory.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the request owns and closes it
            mode="w+b", dir=directory, prefix="upload-",
                                             suffix=_safe_suffix(filename), delete=False)
        self.unclaimed_uploads.append(Path(handle.name))
        return handle

    @property
    def unclaimed_uploads(self) -> list[Path]:
        if "_unclaimed_uploads" not in self.__dict__:
            self.__dict__["_unclaimed_uploads"] = []
        return self.__dict__["_unclaimed_uploads"]


def take_upload(request: UploadRequest, field: str = "file") -> Upload:
    """Claim the uploaded file of ``field``: from now on the caller must delete it."""
    storage = request.files.get(field)
    if storage is None:
        raise MissingFile(f"no file uploaded: send the audio as multipart form field {field!r}", param=field)
    stream = storage.stream
    path = Path(getattr(stream, "name", ""))
    if path not in request.unclaimed_uploads:
        raise MissingFile(f"form field {field!r} must be a file upload", param=field)
    stream.flush()
    stream.close()
    request.unclaimed_uploads.remove(path)
    size = path.stat().st_size
    if size == 0:
        path.unlink(missing_ok=True)
        raise EmptyFile("the uploaded file is empty", param=field)
    return Upload(path=path, filename=display_filename(storage.filename), size=size)


def discard_unclaimed(request: UploadRequest) -> None:
    """Remove uploads nobody claimed (extra fields, or a request that failed before claiming)."""
    for path in request.unclaimed_uploads:
        path.unlink(missing_ok=True)
    request.unclaimed_uploads.clear()
