#!/usr/bin/env python3
"""Entry point: ``python3 serve/qwen2_5_omni_awq.py --checkpoint-path Qwen/Qwen2.5-Omni-7B-AWQ --local-model``.

Parses the flags, builds the app and serves it with Werkzeug's threaded server (development and
single-user use; the Docker image runs the same app under gunicorn).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `serve` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serve.config import Settings, parse_args


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        # transformers' per-tensor progress bars and config notes would drown the server's log.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> int:
    settings: Settings = parse_args(argv)
    configure_logging(settings.log_level)
    if settings.local_model:
        os.environ["HF_HUB_OFFLINE"] = "1"  # --local-model must never touch the network

    from werkzeug.serving import run_simple

    from serve.app import create_app
    from serve.services import EXTENSION_KEY

    app = create_app(settings)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    log = logging.getLogger("serve")
    log.info("listening on http://%s:%d (checkpoint %s, idle timeout %g s)", settings.host, settings.port,
             settings.checkpoint_path, settings.idle_timeout)
    try:
        run_simple(settings.host, settings.port, app, threaded=True, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        log.info("shutting down: letting the running job finish")
        app.extensions[EXTENSION_KEY].close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
