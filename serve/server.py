"""Serving the app: Werkzeug's threaded server for development, gunicorn in production.

Either way the app, and with it the model, lives in exactly one process: gunicorn runs one worker with
threads (a second worker would load a second copy of the model). Shutdown on SIGTERM (and Ctrl-C under
Werkzeug) stops the job queue at once: waiting synchronous requests get 503 ``interrupted``; a running
one may finish within ``--graceful-timeout`` (less the time kept to answer and unload), past it 503
``interrupted``; running async jobs finish the segments the model has, and pause; queued and paused async
jobs go on at the next start, from their last finished segment. Werkzeug goes on answering meanwhile (new
work gets 503 ``shutting_down``); gunicorn's master closes the listening socket, so new connections are
refused while the requests in flight are answered. Then the model is unloaded and the process exits. A
second signal exits at once (async jobs still resume at the next start).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from . import security
from .config import Settings
from .intake import Intake, IntakeLimits, IntakeSocket
from .services import EXTENSION_KEY, Services

log = logging.getLogger(__name__)

# gunicorn kills a worker that stops heart-beating for this long; gthread workers heart-beat from their
# main loop while request threads run, so a 30-minute transcription does not count against it.
WORKER_HEARTBEAT_TIMEOUT = 120
KEEPALIVE_SECONDS = 5
WORKER_CONNECTIONS = 4096
LISTEN_BACKLOG = 2048  # gunicorn's default
FILES_KEPT_FREE = 256  # file descriptors left for the model, the job store, uploads and logs


def _services(app: Flask) -> Services | None:
    return app.extensions.get(EXTENSION_KEY)


def _begin_shutdown(app: Flask) -> threading.Thread | None:
    services = _services(app)
    if services is None:
        return None
    log.info("shutting down: no new work; running jobs get up to %.0f s", services.drain_seconds())
    return services.begin_shutdown(services.drain_seconds())


def _close_services(app: Flask) -> None:
    services = _services(app)
    if services is not None:
        services.close()


class _InFlight:
    """WSGI middleware counting the requests being answered, so a shutdown can wait until they are written."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._cond:
            self.count += 1
        response = None
        try:
            response = self.app(environ, start_response)
            yield from response
        finally:
            close = getattr(response, "close", None)
            try:
                if close is not None:
                    close()  # the WSGI contract: files sent, call_on_close callbacks
            finally:
                with self._cond:
                    self.count -= 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


def run_werkzeug(settings: Settings) -> None:
    from .app import create_app

    app = create_app(settings)
    in_flight = _InFlight(app.wsgi_app)
    app.wsgi_app = in_flight  # type: ignore[method-assign]
    intake = _intake(settings)
    server = _intake_werkzeug_server(settings, app, intake)
    stopping = threading.Event()

    def drain_and_stop() -> None:
        deadline = time.monotonic() + settings.graceful_timeout
        intake.begin_shutdown()
        shutdown = _begin_shutdown(app)
        if shutdown is not None:
            shutdown.join(settings.graceful_timeout)
        in_flight.wait_idle(max(0.5, deadline - time.monotonic()))  # the last answers go out first
        server.shutdown()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            log.warning("second signal %d: exiting now", signum)
            os._exit(1)
        stopping.set()
        threading.Thread(target=drain_and_stop, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("listening on http://%s:%d", settings.host, server.port)
    try:
        server.serve_forever()
    finally:
        intake.stop()
        _close_services(app)


def _intake(settings: Settings) -> Intake:
    """The intake for this server's settings: its limits, and the Host and key checks it makes on headers."""
    settings.temp_dir.mkdir(parents=True, exist_ok=True)
    intake = Intake(IntakeLimits(client_timeout=settings.client_timeout, min_rate=settings.min_upload_rate,
                                 max_body=settings.max_upload_size, keepalive=KEEPALIVE_SECONDS,
                                 spool_dir=settings.temp_dir))
    intake.admit = security.header_checks(settings)
    return intake.start()


def _intake_werkzeug_server(settings: Settings, app: Flask, intake: Intake) -> Any:
    """Werkzeug's threaded server, starting a connection's thread only once the intake has its request."""
    from werkzeug.serving import ThreadedWSGIServer

    class IntakeWSGIServer(ThreadedWSGIServer):
        request_queue_size = LISTEN_BACKLOG  # Werkzeug's 128 makes a burst of connections wait for SYN retries

        def process_request(self, request: Any, client_address: Any) -> None:
            conn = IntakeSocket(request)
            start_thread = super().process_request
            intake.receive(conn, on_ready=lambda: start_thread(conn, client_address), on_closed=lambda: None)

    return IntakeWSGIServer(settings.host, settings.port, app)


def _intake_worker_class(settings: Settings) -> type:
    """gunicorn's gthread worker, handing a connection to a request thread only once the intake has its
    request: a slow client holds a socket, never a thread."""
    from gunicorn.workers.gthread import ThreadWorker

    class IntakeThreadWorker(ThreadWorker):
        def init_process(self) -> None:
            self.intake = _intake(settings)
            super().init_process()

        def notify(self) -> None:
            # Every request passes through the intake thread: without it the worker serves nothing, so it
            # must stop heart-beating and be replaced rather than hang.
            if not self.intake.alive and self.alive:
                self.log.error("the request intake thread has died; restarting the worker")
                self.alive = False
            super().notify()

        def enqueue_req(self, conn: Any) -> None:
            if not isinstance(conn.sock, IntakeSocket):
                conn.sock = IntakeSocket(conn.sock)
            if conn.sock.has_request():
                conn.data_ready = True  # the thread must not wait for the socket: the request is here
                super().enqueue_req(conn)
                return
            self.intake.receive(conn.sock, on_ready=lambda: self.method_queue.defer(self.enqueue_req, conn),
                                on_closed=lambda: self.method_queue.defer(self._connection_lost))

        def _connection_lost(self) -> None:
            self.nr_conns -= 1

        def finish_request(self, conn: Any, fs: Any) -> None:
            answered = not fs.cancelled() and fs.exception() is None
            keep_alive, done = answered and fs.result() is True, answered and fs.result() is False
            if isinstance(conn.sock, IntakeSocket):
                if keep_alive and conn.sock.leftover and self.alive:
                    # A pipelined request that came with the last one will not make the socket readable again.
                    self.enqueue_req(conn)
                    return
                if done:
                    # gunicorn would drain and close on this loop's thread, up to 2 s for a client that keeps
                    # its end open: the intake does it instead.
                    self.intake.close_gracefully(
                        conn.sock, on_closed=lambda: self.method_queue.defer(self._connection_lost))
                    return
            super().finish_request(conn, fs)

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.intake.begin_shutdown()
            super().handle_exit(sig, frame)

    return IntakeThreadWorker


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    options: dict[str, Any] = {
        "bind": f"{host}:{settings.port}",
        "workers": 1,  # the model must live in exactly one process
        "worker_class": _intake_worker_class(settings),
        "threads": settings.request_threads,
        # Connections, slow ones included: the intake holds them without a thread.
        "worker_connections": _worker_connections(),
        "timeout": WORKER_HEARTBEAT_TIMEOUT,
        "graceful_timeout": math.ceil(settings.graceful_timeout),
        "keepalive": KEEPALIVE_SECONDS,
        "max_requests": 0,  # never recycle the worker: that would drop the loaded model
        "preload_app": False,  # build the app (threads, model manager) in the worker, not the master
        "accesslog": None,  # serve.access logs every request as JSON already
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "proc_name": "qwen2.5-omni-transcribe",
        # gunicorn's control socket can add workers at run time; each would load its own model.
        "control_socket_disable": True,
        "post_worker_init": _stop_jobs_on_sigterm,
        "worker_exit": lambda _server, worker: _close_services(worker.wsgi),
    }
    if os.path.isdir("/dev/shm"):
        options["worker_tmp_dir"] = "/dev/shm"  # heartbeat file off slow container overlay disks
    return options


def _worker_connections() -> int:
    """As many connections as the open-file limit leaves room for (gunicorn's worker dies on EMFILE)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(WORKER_CONNECTIONS, soft - FILES_KEPT_FREE))


def _stop_jobs_on_sigterm(worker: Any) -> None:
    """On SIGTERM, stop the job queue at once, while gunicorn stops accepting and waits (up to its graceful
    timeout) for the requests in flight: they are answered before it lets the worker exit."""
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        _begin_shutdown(worker.wsgi)
        if callable(gunicorn_handler):
            gunicorn_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def run_gunicorn(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

    from .app import create_app

    if settings.role != "api":
        # The worker loads the model: its libraries are imported here, before the port opens, so that the
        # worker starts (and answers its first request) at once. No CUDA is touched, so forking stays safe.
        import torch  # noqa: F401

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in gunicorn_options(settings).items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return create_app(settings)

    Server().run()


def open_to_the_network_warning(settings: Settings) -> str | None:
    """What to tell the operator of a server that anyone who reaches it may use (None when that is not so)."""
    if settings.api_keys:
        return None
    try:
        if ipaddress.ip_address(settings.host).is_loopback:
            return None
    except ValueError:
        if settings.host.lower() == "localhost":
            return None
    return (f"listening on {settings.host} without an API key: anyone who reaches this address can transcribe, "
            "list, read and cancel every job; set QWEN_OMNI_API_KEY (or --api-key)")


def _raise_open_file_limit() -> None:
    """Every connection, slow ones included, is a file descriptor: take all the system allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(settings: Settings) -> None:
    _raise_open_file_limit()
    if (warning := open_to_the_network_warning(settings)) is not None:
        log.warning(warning)
    log.info("serving on http://%s:%d with %s (checkpoint %s, idle timeout %g s)", settings.host, settings.port,
             settings.server, settings.checkpoint_path, settings.idle_timeout)
    if settings.server == "gunicorn":
        run_gunicorn(settings)
    else:
        run_werkzeug(settings)
