"""The request intake on real loopback sockets: whole requests handed on, slow and oversized ones refused."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serve.intake import Intake, IntakeLimits, IntakeSocket

TIMEOUT = 0.6


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


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[Intake]:
    intake = Intake(IntakeLimits(client_timeout=TIMEOUT, min_rate=1000, max_body=10_000, keepalive=0.3,
                                 spool_dir=tmp_path)).start()
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
        conn = Connection(client, IntakeSocket(accepted, intake))
        intake.receive(conn.server, on_ready=conn.ready.set, on_closed=conn.closed.set)
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


def test_a_reader_that_runs_out_waits_for_the_next_request(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.ready.wait(5)
    read_request(conn.server)
    later = b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"
    threading.Timer(0.2, conn.client.sendall, [later]).start()
    assert conn.server.recv(1000) == later  # a kept-alive connection, as Werkzeug's handler reads it


def test_a_stalled_request_gets_408_and_nothing_is_handed_on(connect, intake: Intake,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    conn = connect()
    started = time.monotonic()
    conn.client.sendall(b"POST /transcribe/json HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\nRIFF")
    answer = conn.answer()
    assert answer.startswith(b"HTTP/1.1 408 ")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "request_timeout" and body["status"] == "error" and "stalled" in body["error"]
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 1.5
    assert conn.closed.wait(5) and not conn.ready.is_set() and intake.cut_off == 1
    assert list(tmp_path.iterdir()) == []


def test_a_request_slower_than_the_minimum_rate_gets_408(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n")
    stop = threading.Event()

    def dribble() -> None:  # never stalls for the timeout, always below 1000 bytes/s
        while not stop.wait(0.1):
            try:
                conn.client.send(b"x" * 10)
            except OSError:
                return

    threading.Thread(target=dribble, daemon=True).start()
    try:
        answer = conn.answer()
    finally:
        stop.set()
    assert answer.startswith(b"HTTP/1.1 408 ")
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]  # OpenAI's shape under /v1/
    assert error["code"] == "request_timeout" and "slower than 1000 bytes/s" in error["message"]


def test_a_connection_that_sends_nothing_gets_408(connect) -> None:  # type: ignore[no-untyped-def]
    assert connect().answer().startswith(b"HTTP/1.1 408 ")


def test_an_idle_kept_alive_connection_is_closed_quietly(connect) -> None:  # type: ignore[no-untyped-def]
    conn = connect()
    conn.client.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.ready.wait(5)
    read_request(conn.server)
    assert conn.server.recv(100) == b""  # keep-alive (0.3 s) over: end of file, no 408
    assert conn.answer() == b""


@pytest.mark.parametrize("request_bytes", [
    b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10001\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2711\r\n" + b"a" * 10001,
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
