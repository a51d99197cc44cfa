"""Request intake: a request reaches a request thread only once it has fully arrived.

Slow clients cost a request thread nothing. One intake thread reads every connection's request (headers and
body, spooled to an unlinked temporary file under temp/ past 64 KiB) from non-blocking sockets in a selector
loop, the way nginx buffers request bodies before its upstream sees them. Only a complete request is handed
to the HTTP server (gunicorn's gthread worker, or Werkzeug's threaded server), which parses and answers it
from the buffered bytes as if they came from the socket.

- A client that sends nothing for ``--client-timeout`` seconds, or less than ``--min-upload-rate`` bytes a
  second over any window of ``--client-timeout`` seconds, is answered 408 and disconnected; what it had sent
  is deleted with the spool.
- A request with a body is first shown, headers only, to the server's checks (``Intake.admit``: Host and API
  key), so a stranger's upload is refused before a byte of it is stored; a declared body over
  ``--max-upload-size`` is answered 413 the same way. Refused clients get their answer, then what they
  still send is dropped for a while (a close on unread data would reset the connection, answer and all).
- gunicorn's closes after a response happen here too (RFC 9112 9.6: half-close, drain, close), not on its
  event loop, which a client keeping its end open would otherwise hold for 2 s.
- A shutdown answers requests still arriving 503 after a few seconds and closes idle connections.

HTTP framing is read with h11, so chunked bodies and pipelined requests are delimited exactly.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import selectors
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import unquote, urlsplit

import h11

from .errors import OPENAI_PREFIX, STORAGE_RETRY_AFTER, InsufficientStorage, ShuttingDownError, error_body

log = logging.getLogger(__name__)

RECV_CHUNK = 256 * 1024
SPOOL_IN_MEMORY = 64 * 1024  # bodies past this go to a file under temp/: 4096 connections hold 256 MiB at most
# Spooling stops (507) when the spool folder's disk would keep less than this free, checked every FREE_CHECK.
MIN_FREE_BYTES = 512 * 1024**2
FREE_CHECK = 64 * 1024**2
MAX_HEADER_BYTES = 64 * 1024
LOOP_TICK = 0.25  # how often deadlines are checked
# After refusing a request whose body is still coming, read and drop what follows for a while before closing:
# closing on unread data resets the connection, and the client, busy sending, would never see the answer.
LINGER_SECONDS = 10.0
LINGER_IDLE_SECONDS = 2.0
GRACEFUL_CLOSE_SECONDS = 2.0  # gunicorn's own
STOP_LINGER_SECONDS = 2.0  # as gunicorn's gthread: how long a stopping server still reads a new request


@dataclass(frozen=True)
class IntakeLimits:
    client_timeout: float = 30.0  # seconds without a byte before 408
    min_rate: int = 1024  # bytes per second each client_timeout window of a request must bring; 0 = any
    max_body: int = 4 * 1024**3  # larger bodies get 413
    keepalive: float = 5.0  # seconds an idle kept-alive connection stays open
    spool_dir: Path | None = None  # where large bodies are spooled (None: the system's temp folder)


class Refusal(NamedTuple):
    """What the server's header-time checks (``Intake.admit``) answer to a request they refuse."""

    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None


# (method, path, headers) -> None to admit the request, or why not
Admission = Callable[[str, str, dict[str, str]], "Refusal | None"]


def _error_response(status: int, code: str, message: str, *, openai: bool,
                    headers: dict[str, str] | None = None) -> bytes:
    """The server's one error shape, written straight to the socket: no app is involved yet."""
    data = json.dumps(error_body(message, code, status, openai=openai)).encode()
    extra = dict(headers or {})
    if status == InsufficientStorage.status:
        extra.setdefault("Retry-After", STORAGE_RETRY_AFTER)
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in extra.items()), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class IntakeSocket:
    """The connection as the HTTP server sees it: reads come from the buffered request, everything else goes
    to the real socket. Past the buffered request (and what came after it), reads go to the real socket,
    under the server's own timeouts: a server reads there only to drain a connection it is closing, and
    takes its next request through the intake."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._request: IO[bytes] | None = None  # the complete request being replayed
        self._unread = 0
        self.leftover = b""  # bytes that arrived after the buffered request (a pipelined one)
        self.closed = False
        self.requests = 0  # requests buffered on this connection so far
        self._swallow_continue = False

    # --- what the intake calls ----------------------------------------------------------------------
    def load(self, request: IO[bytes], size: int, *, continue_sent: bool) -> None:
        self.drop_request()
        request.seek(0)
        self._request, self._unread = request, size
        self._swallow_continue = continue_sent
        self.requests += 1

    def drop_request(self) -> None:
        if self._request is not None:
            self._request.close()
        self._request, self._unread = None, 0

    def has_request(self) -> bool:
        """A buffered request not yet read to its end."""
        return self._unread > 0

    # --- the socket interface the HTTP servers use ----------------------------------------------------
    def recv(self, size: int, flags: int = 0) -> bytes:
        if flags & socket.MSG_PEEK:  # a look at the connection itself (has the client gone?)
            return self.sock.recv(size, flags)
        if self._unread:
            assert self._request is not None
            data = self._request.read(min(size, self._unread))
            self._unread -= len(data)
            if not self._unread:
                self.drop_request()  # the spool goes as soon as the request has been read
            return data
        if self.leftover:
            data, self.leftover = self.leftover[:size], self.leftover[size:]
            return data
        return self.sock.recv(size, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view), flags)
        view[:len(data)] = data
        return len(data)

    def makefile(self, mode: str = "r", buffering: int | None = None, **_: Any) -> Any:
        if "r" in mode:
            return io.BufferedReader(_Reader(self), buffering if buffering and buffering > 0 else 8192)
        return self.sock.makefile(mode, buffering)

    def send(self, data: bytes, flags: int = 0) -> int:
        return len(data) if self._swallowed(data) else self.sock.send(data, flags)

    def sendall(self, data: bytes, flags: int = 0) -> None:
        if not self._swallowed(data):
            self.sock.sendall(data, flags)

    def _swallowed(self, data: bytes) -> bool:
        """The server's own 100 Continue, which the intake has sent already when the client asked: dropped."""
        if self._swallow_continue and bytes(data[:13]) in (b"HTTP/1.1 100 ", b"HTTP/1.0 100 "):
            self._swallow_continue = False
            return True
        return False

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.closed = True
        self.drop_request()
        with contextlib.suppress(OSError):
            self.sock.close()

    def __getattr__(self, name: str) -> Any:  # setblocking, settimeout, shutdown, getpeername, ...
        return getattr(self.sock, name)


class _Reader(io.RawIOBase):
    """``makefile('rb')`` for Werkzeug's handler: a raw stream over the buffered request."""

    def __init__(self, sock: IntakeSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


@dataclass(eq=False)
class _Reading:
    """One connection whose request is arriving."""

    conn: IntakeSocket
    on_ready: Callable[[], None]
    on_closed: Callable[[], None]
    opened: float
    parser: h11.Connection = field(default_factory=lambda: h11.Connection(
        h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES))
    spool: IO[bytes] | None = None
    first_byte: float | None = None
    last_byte: float = 0.0
    received: int = 0
    body: int = 0
    openai: bool = False
    continue_sent: bool = False
    lingering_until: float | None = None  # refused: what still arrives is dropped until then
    window_start: float = 0.0  # the minimum rate is checked over windows of --client-timeout seconds
    window_bytes: int = 0
    next_free_check: int = FREE_CHECK


class Intake:
    """The intake thread: reads requests until they are complete, then hands them on (see the module doc)."""

    def __init__(self, limits: IntakeLimits) -> None:
        self.limits = limits
        self._selector = selectors.DefaultSelector()
        self._incoming: list[_Reading] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._readings: set[_Reading] = set()
        self._stopping_since: float | None = None
        self.admit: Admission | None = None  # the server's checks at header time, for requests with a body
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self.cut_off = 0  # connections answered 408 (for tests and logs)

    def start(self) -> Intake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._wake()
        self._thread.join(5)
        if not self._thread.is_alive():  # its selector and wake-up pair are no longer in use
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def begin_shutdown(self) -> None:
        """A shutdown: a few seconds on (for a request the server's poller has just handed over), requests
        still arriving get 503 and idle connections are closed; complete requests still go to the server."""
        self._stopping_since = time.monotonic()
        self._wake()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def receive(self, conn: IntakeSocket, *, on_ready: Callable[[], None], on_closed: Callable[[], None]) -> None:
        """Read ``conn``'s next request; then ``on_ready()`` (the request is loaded in ``conn``), or
        ``on_closed()`` when the connection ended first (``conn`` is closed by then). Both are called from
        the intake thread."""
        with self._lock:
            self._incoming.append(_Reading(conn, on_ready, on_closed, time.monotonic()))
        self._wake()

    def close_gracefully(self, conn: IntakeSocket, *, on_closed: Callable[[], None]) -> None:
        """Close ``conn`` after its response the way RFC 9112 9.6 asks (end the writes, drop what still
        arrives until the client closes, for GRACEFUL_CLOSE_SECONDS at most), here rather than in a thread or
        the server's event loop that a client keeping its end open would hold."""
        reading = _Reading(conn, on_ready=lambda: None, on_closed=on_closed, opened=time.monotonic())
        reading.lingering_until = reading.last_byte = reading.opened + GRACEFUL_CLOSE_SECONDS
        with self._lock:
            self._incoming.append(reading)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending already
            self._wake_w.send(b"x")

    def _run(self) -> None:
        next_check = 0.0
        while not self._stopped.is_set():
            try:
                events = self._selector.select(LOOP_TICK)
            except OSError:
                continue
            for key, _ in events:
                if key.fileobj is self._wake_r:
                    self._drain_wakeups()
                else:
                    self._guarded(self._on_readable, key.data)
            with self._lock:
                incoming, self._incoming = self._incoming, []
            for reading in incoming:
                self._guarded(self._take, reading)
            now = time.monotonic()
            if now >= next_check:  # every tick, not at every event: 500 slow clients make many events
                for reading in list(self._readings):
                    self._guarded(self._check_deadline, reading, now)
                next_check = now + LOOP_TICK
        for reading in list(self._readings):
            self._close(reading)

    def _guarded(self, action: Callable[..., None], reading: _Reading, *args: Any) -> None:
        try:
            action(reading, *args)
        except Exception:  # one bad connection must not stop the thread every request passes through
            log.exception("intake: dropped a connection after an unexpected error")
            with contextlib.suppress(Exception):
                self._close(reading)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _take(self, reading: _Reading) -> None:
        conn = reading.conn
        try:
            conn.sock.setblocking(False)
            self._selector.register(conn.sock, selectors.EVENT_READ, reading)
        except (OSError, ValueError):  # closed meanwhile
            reading.on_closed()
            return
        self._readings.add(reading)
        if reading.lingering_until is not None:  # closing: the response has been written
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            return
        if conn.leftover:  # a pipelined request came with the previous one
            data, conn.leftover = conn.leftover, b""
            self._feed(reading, data)

    def _on_readable(self, reading: _Reading) -> None:
        try:
            data = reading.conn.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its request was complete: nothing of it is kept
            self._close(reading)
            return
        if reading.lingering_until is not None:
            reading.last_byte = time.monotonic()
            return
        self._feed(reading, data)

    def _feed(self, reading: _Reading, data: bytes) -> None:
        now = time.monotonic()
        if reading.first_byte is None:
            data = data.lstrip(b"\r\n")  # RFC 9112 2.2: empty lines before a request are ignored
            if not data:
                return
            reading.first_byte = reading.window_start = now
        reading.last_byte = now
        reading.received += len(data)
        reading.window_bytes += len(data)
        try:
            if reading.spool is None:
                reading.spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - handed to the connection
                    SPOOL_IN_MEMORY, dir=self.limits.spool_dir)
            if reading.received >= reading.next_free_check:
                reading.next_free_check += FREE_CHECK
                self._check_free_space()
            reading.spool.write(data)
        except OSError as exc:
            log.error("could not buffer a request (%s)", exc)
            self._refuse(reading, InsufficientStorage.status, InsufficientStorage.code,
                         "the server has no space left to store the upload; retry later or send a smaller file")
            return
        reading.parser.receive_data(data)
        self._advance(reading)

    def _check_free_space(self) -> None:
        directory = self.limits.spool_dir or Path(tempfile.gettempdir())
        if shutil.disk_usage(directory).free < MIN_FREE_BYTES:
            raise OSError(errno.ENOSPC, f"less than {MIN_FREE_BYTES // 1024**2} MiB free under {directory}")

    def _advance(self, reading: _Reading) -> None:
        parser = reading.parser
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(reading, exc.error_status_hint, "bad_request", f"malformed HTTP request: {exc}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                path = urlsplit(event.target.decode("latin-1")).path
                reading.openai = unquote(path).startswith(OPENAI_PREFIX)
                if not self._accept_headers(reading, event, path):
                    return
            elif isinstance(event, h11.Data):
                reading.body += len(event.data)
                if reading.body > self.limits.max_body:
                    self._refuse_too_large(reading)
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._deliver(reading)
                return

    def _accept_headers(self, reading: _Reading, request: h11.Request, path: str) -> bool:
        length = next((int(v) for k, v in request.headers if k == b"content-length"), None)
        if length is not None and length > self.limits.max_body:
            self._refuse_too_large(reading)
            return False
        has_body = bool(length) or any(k == b"transfer-encoding" for k, _ in request.headers)
        if has_body and self.admit is not None:
            refusal = self.admit(request.method.decode("latin-1"), path, dict(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers))
            if refusal is not None:  # nothing of a stranger's body is stored
                self._refuse(reading, refusal.status, refusal.code, refusal.message, headers=refusal.headers)
                return False
        if reading.parser.they_are_waiting_for_100_continue:
            try:
                reading.conn.sock.send(_CONTINUE)
                reading.continue_sent = True
            except OSError:
                pass  # the client sends its body after a short wait anyway
        return True

    def _deliver(self, reading: _Reading) -> None:
        trailing, _ = reading.parser.trailing_data
        spool = reading.spool
        assert spool is not None
        size = reading.received - len(trailing)
        spool.truncate(size)
        self._forget(reading)
        conn = reading.conn
        conn.leftover = bytes(trailing)
        conn.load(spool, size, continue_sent=reading.continue_sent)
        reading.spool = None
        with contextlib.suppress(OSError):
            conn.sock.setblocking(True)
        reading.on_ready()

    def _check_deadline(self, reading: _Reading, now: float) -> None:
        if reading not in self._readings:
            return
        limits = self.limits
        if reading.lingering_until is not None:
            if now > reading.lingering_until or now - reading.last_byte > LINGER_IDLE_SECONDS:
                self._close(reading)
            return
        if self._stopping_since is not None and now - max(reading.opened, self._stopping_since) > \
                STOP_LINGER_SECONDS:
            self._stop_reading(reading)
            return
        if reading.first_byte is None:
            if reading.conn.requests:  # an idle kept-alive connection: closed quietly, as servers do
                if now - reading.opened > limits.keepalive:
                    self._close(reading)
            elif now - reading.opened > limits.client_timeout:
                self._cut_off(reading, f"no request arrived within {limits.client_timeout:g} s")
            return
        if now - reading.last_byte > limits.client_timeout:
            self._cut_off(reading, f"the request stalled: no data for {limits.client_timeout:g} s")
        elif limits.min_rate and now - reading.window_start >= limits.client_timeout:
            # Each window of --client-timeout seconds must bring min_rate bytes a second: a fast start buys no
            # credit for a trickle later.
            if reading.window_bytes < limits.min_rate * limits.client_timeout:
                self._cut_off(reading, f"the request arrived slower than {limits.min_rate} bytes/s over "
                                       f"{limits.client_timeout:g} s")
            else:
                reading.window_start, reading.window_bytes = now, 0

    def _stop_reading(self, reading: _Reading) -> None:
        """A shutdown: a connection that has not sent a byte is closed; a request still arriving is answered
        503, since the server takes no new work now."""
        if reading.first_byte is None:
            self._close(reading)
            return
        self._respond_and_close(reading, _error_response(
            ShuttingDownError.status, ShuttingDownError.code, "the server is shutting down; retry in a minute",
            openai=reading.openai, headers={"Retry-After": "60"}))

    def _cut_off(self, reading: _Reading, why: str) -> None:
        self.cut_off += 1
        log.info("cut off a slow client after %.1f s and %d bytes: %s",
                 time.monotonic() - reading.opened, reading.received, why)
        self._respond_and_close(reading, _error_response(
            408, "request_timeout", f"{why}; the partial upload was discarded", openai=reading.openai))

    def _refuse_too_large(self, reading: _Reading) -> None:
        limit = self.limits.max_body
        self._refuse(reading, 413, "payload_too_large",
                     f"the upload is larger than this server accepts ({limit / 1024**2:.0f} MiB)")

    def _refuse(self, reading: _Reading, status: int, code: str, message: str,
                headers: dict[str, str] | None = None) -> None:
        """Answer, then linger: the client may still be sending the body it must not see refused as a reset."""
        with contextlib.suppress(OSError):
            reading.conn.sock.send(_error_response(status, code, message, openai=reading.openai, headers=headers))
            reading.conn.sock.shutdown(socket.SHUT_WR)
        if reading.spool is not None:
            reading.spool.close()
            reading.spool = None
        now = time.monotonic()
        reading.lingering_until, reading.last_byte = now + LINGER_SECONDS, now

    def _respond_and_close(self, reading: _Reading, response: bytes) -> None:
        with contextlib.suppress(OSError):  # once, without waiting: a stalled client may not read it
            reading.conn.sock.send(response)
        self._close(reading)

    def _forget(self, reading: _Reading) -> None:
        self._readings.discard(reading)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(reading.conn.sock)

    def _close(self, reading: _Reading) -> None:
        self._forget(reading)
        if reading.spool is not None:
            reading.spool.close()  # an unlinked file: the partial upload is gone
            reading.spool = None
        with contextlib.suppress(OSError):
            reading.conn.sock.shutdown(socket.SHUT_RDWR)
        reading.conn.close()
        reading.on_closed()
