"""Serving the app: Werkzeug's threaded server for development, gunicorn in production.

Either way the app, and with it the model, lives in exactly one process: gunicorn runs one worker with
threads (a second worker would load a second copy of the model). Shutdown is graceful: new requests
are refused, the running transcription finishes (within the graceful timeout), queued jobs are failed as
interrupted, and the model is unloaded.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from typing import Any

from flask import Flask

from .config import Settings
from .services import EXTENSION_KEY

log = logging.getLogger(__name__)

# gunicorn kills a worker that stops heart-beating for this long; gthread workers heart-beat from their
# main loop while request threads run, so a 30-minute transcription does not count against it.
WORKER_HEARTBEAT_TIMEOUT = 120


def _close_services(app: Flask) -> None:
    services = app.extensions.get(EXTENSION_KEY)
    if services is not None:
        log.info("shutting down: letting the running job finish")
        services.close()


def run_werkzeug(settings: Settings) -> None:
    from werkzeug.serving import run_simple

    from .app import create_app

    app = create_app(settings)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        run_simple(settings.host, settings.port, app, threaded=True, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        _close_services(app)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    options: dict[str, Any] = {
        "bind": f"{host}:{settings.port}",
        "workers": 1,  # the model must live in exactly one process
        "worker_class": "gthread",
        "threads": settings.request_threads,
        "timeout": WORKER_HEARTBEAT_TIMEOUT,
        "graceful_timeout": math.ceil(settings.graceful_timeout),
        "keepalive": 5,
        "max_requests": 0,  # never recycle the worker: that would drop the loaded model
        "preload_app": False,  # build the app (threads, model manager) in the worker, not the master
        "accesslog": None,  # serve.access logs every request as JSON already
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "proc_name": "qwen2.5-omni-transcribe",
        # gunicorn's control socket can add workers at run time; each would load its own model.
        "control_socket_disable": True,
        "worker_exit": lambda _server, worker: _close_services(worker.wsgi),
    }
    if os.path.isdir("/dev/shm"):
        options["worker_tmp_dir"] = "/dev/shm"  # heartbeat file off slow container overlay disks
    return options


def run_gunicorn(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

    from .app import create_app

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in gunicorn_options(settings).items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return create_app(settings)

    Server().run()


def serve(settings: Settings) -> None:
    log.info("serving on http://%s:%d with %s (checkpoint %s, idle timeout %g s)", settings.host, settings.port,
             settings.server, settings.checkpoint_path, settings.idle_timeout)
    if settings.server == "gunicorn":
        run_gunicorn(settings)
    else:
        run_werkzeug(settings)
