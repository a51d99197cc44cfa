"""The request intake on real loopback sockets: whole requests handed on, slow and oversized ones refused."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serve.intake import Intake, IntakeLimits, IntakeSocket, Refusal

TIMEOUT = 0.6
RATE_TIMEOUT = 2.0  # the minimum-rate test's windows: long enough that a busy machine's pauses are not stalls


@dataclass
class Connection:
    """A client socket and the server side as the intake hands it on."""

    client: socket.socket
    server: IntakeSocket
    ready: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)

    def answer(self, timeout: float = 5) -> bytes:
        """What the intake wrote to the client before closing (b'' if it closed quietly)."""
        self.client.settimeout(timeout)
        data = b""
        while chunk := self.client.recv(65536):
            data += chunk
        return data


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def limits(tmp_path: Path) -> IntakeLimits:
    return IntakeLimits(client_timeout=TIMEOUT, min_rate=1000, max_body=200_000, keepalive=0.3, spool_dir=tmp_path)


@pytest.fixture
def intake(limits: IntakeLimits) -> Iterator[Intake]:
    intake = Intake(limits).start()
    yield intake
    intake.stop()


@pytest.fixture
def connect(intake: Intake) -> Iterator:
    listener = socket.create_server(("127.0.0.1", 0))
    opened: list[socket.socket] = [listener]

    def open_connection() -> Connection:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        opened.extend([client, accepted])
        conn = Connection(client, IntakeSocket(accepted))
        intake.receive(conn.server, on_ready=lambda: (accepted.settimeout(5), conn.ready.set()),
                       on_closed=conn.closed.set)
        return conn

    yield open_connection
    for sock in opened:
        sock.close()


def read_request(conn: IntakeSocket) -> bytes:
    data = b""
    while conn.has_request():
        data += conn.recv(7)  # small reads: the replay must keep its place
    return data


def test_a_complete_request_is_handed_on_byte_for_byte(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    request = b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + bytes(range(250)) * 20
    conn.client.sendall(request[:100])
    assert not conn.ready.wait(0.2)  # not while it is still arriving
    conn.client.sendall(request[100:])
    assert conn.ready.wait(5) and read_request(conn.server) == request


def test_chunked_and_pipelined_requests_are_delimited_exactly(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    first = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    second = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    conn.client.sendall(first + second)
    assert conn.ready.wait(5) and read_request(conn.server) == first
    assert conn.server.leftover == second

    # The next read takes the pipelined request from the leftover, without another byte from the client.
    assert conn.server.recv(1000) == second


def test_past_the_request_reads_go_to_the_socket_itself(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.ready.wait(5)
    read_request(conn.server)
    conn.client.sendall(b"more")  # what a server draining a connection it closes reads, under its timeout
    assert conn.server.recv(1000) == b"more"
    conn.server.settimeout(0.2)
    with pytest.raises(TimeoutError):  # never a wait for the intake
        conn.server.recv(1000)


def test_empty_lines_before_a_request_are_ignored(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(b"\r\nGET /one HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.ready.wait(5) and read_request(conn.server) == b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_stalled_request_gets_408_and_its_spool_is_gone(connect, intake: Intake) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    fds = open_fds()
    started = time.monotonic()
    # Past the in-memory part: the body is spooled to a file, which the cut-off must close.
    conn.client.sendall(b"POST /transcribe/json HTTP/1.1\r\nHost: x\r\nContent-Length: 190000\r\n\r\n"
                        + b"R" * 100_000)
    answer = conn.answer()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "request_timeout" and body["status"] == "error" and "stalled" in body["error"]
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 5
    assert conn.closed.wait(5) and not conn.ready.is_set() and intake.cut_off == 1
    assert open_fds() == fds - 1  # the spool's file and the server side of the socket are closed


@pytest.mark.parametrize("fast_start", [0, 150_000], ids=["slow-throughout", "fast-then-slow"])
def test_a_request_slower_than_the_minimum_rate_gets_408(tmp_path: Path, fast_start: int) -> None:
    limits = IntakeLimits(client_timeout=RATE_TIMEOUT, min_rate=1000, max_body=200_000, spool_dir=tmp_path)
    intake = Intake(limits).start()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    conn = Connection(client, IntakeSocket(accepted))
    intake.receive(conn.server, on_ready=conn.ready.set, on_closed=conn.closed.set)
    # A fast start buys no credit: what counts is each window's rate.
    client.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 190000\r\n\r\n"
                   + b"f" * fast_start)
    stop = threading.Event()

    def dribble() -> None:  # never stalls for the timeout, always below 1000 bytes/s
        while not stop.wait(0.1):
            try:
                client.send(b"x" * 10)
            except OSError:
                return

    threading.Thread(target=dribble, daemon=True).start()
    try:
        answer = conn.answer(timeout=4 * RATE_TIMEOUT + 5)
    finally:
        stop.set()
        intake.stop()
        for sock in (listener, client, accepted):
            sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]  # OpenAI's shape under /v1/
    assert error["code"] == "request_timeout" and "slower than 1000 bytes/s" in error["message"]


def test_a_connection_that_sends_nothing_gets_408(connect) -> None:  # type: ignore[no-untyped-def]
    assert connect().answer().startswith(b"HTTP/1.1 408 ")


def test_an_idle_kept_alive_connection_is_closed_quietly(connect, intake: Intake) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.ready.wait(5)
    read_request(conn.server)
    closed = threading.Event()
    intake.receive(conn.server, on_ready=lambda: None, on_closed=closed.set)  # the next request, as gunicorn asks
    assert conn.answer() == b""  # keep-alive (0.3 s) over: closed, no 408
    assert closed.wait(5) and conn.server.closed


@pytest.mark.parametrize("request_bytes", [
    b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 200001\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n30d41\r\n" + b"a" * 200_001,
])
def test_a_body_over_the_limit_gets_413_before_it_is_stored(connect, request_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(request_bytes)
    answer = conn.answer()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "payload_too_large"


def test_malformed_requests_get_400(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc")
    assert conn.answer().startswith(b"HTTP/1.1 400 ")


def test_100_continue_is_sent_once(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    conn.client.settimeout(5)
    assert conn.client.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # so the client sends its body
    conn.client.sendall(b"abc")
    assert conn.ready.wait(5)
    read_request(conn.server)
    conn.server.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the server's own, as it sees the header: dropped
    conn.server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert conn.client.recv(100) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_a_client_gone_before_its_request_is_complete_leaves_nothing(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\npartial")
    conn.client.close()
    assert conn.closed.wait(5) and not conn.ready.is_set()


def test_uploads_the_server_refuses_at_their_headers_are_never_stored(connect, intake: Intake) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[str, str, str | None]] = []

    def admit(method: str, path: str, headers: dict[str, str]) -> Refusal | None:
        seen.append((method, path, headers.get("x-api-key")))
        if headers.get("x-api-key") != "k":
            return Refusal(401, "unauthorized", "a valid API key is required", {"WWW-Authenticate": "Bearer"})
        return None

    intake.admit = admit
    stranger = connect()
    stranger.client.sendall(b"POST /transcribe/json?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 150000\r\n\r\n")
    stranger.client.sendall(b"s" * 150_000)  # still sending when refused: it must see the answer, not a reset
    answer = stranger.answer()
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and b"WWW-Authenticate: Bearer\r\n" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "unauthorized"
    assert not stranger.ready.is_set()

    member = connect()
    request = b"POST /transcribe/json HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Length: 3\r\n\r\nabc"
    member.client.sendall(request)
    assert member.ready.wait(5) and read_request(member.server) == request
    health = connect()  # no body: nothing to protect, the app decides (/health needs no key)
    health.client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert health.ready.wait(5)
    assert seen == [("POST", "/transcribe/json", None), ("POST", "/transcribe/json", "k")]


def test_a_shutdown_answers_arriving_requests_503_and_closes_idle_ones(connect, intake: Intake) -> None:  # type: ignore[no-untyped-def]
    intake.limits = IntakeLimits(client_timeout=30, spool_dir=intake.limits.spool_dir)  # no 408 meanwhile
    arriving, idle = connect(), connect()
    arriving.client.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n")
    started = time.monotonic()
    intake.begin_shutdown()
    answer = arriving.answer()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 60\r\n" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "shutting_down"
    assert idle.answer() == b""
    assert time.monotonic() - started < TIMEOUT + 5
