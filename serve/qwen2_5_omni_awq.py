#!/usr/bin/env python3
"""Entry point: ``python3 serve/qwen2_5_omni_awq.py --checkpoint-path Qwen/Qwen2.5-Omni-7B-AWQ --local-model``.

Parses the flags and serves the app: with Werkzeug's threaded server by default (development), with
gunicorn when ``--server gunicorn`` (or QWEN_OMNI_SERVER=gunicorn, as the Docker image sets). With
``--role worker`` it runs a scale-out GPU worker instead (see ``serve/distributed/``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `serve` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serve.config import Settings, parse_args
from serve.params import server_defaults_problem


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
    if (problem := server_defaults_problem(settings)) is not None:
        print(f"qwen2_5_omni_awq.py: error: {problem}", file=sys.stderr)
        return 2

    if settings.role == "worker":  # scale-out: one GPU's model, no HTTP
        from serve.distributed.worker import run

        run(settings)
        return 0
    from serve.server import serve

    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
