"""The browser page at /: upload a file, watch it being transcribed, download the results."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory

STATIC = Path(__file__).parent / "static"

bp = Blueprint("web", __name__, static_folder=str(STATIC), static_url_path="/static")


@bp.get("/")
def index():  # type: ignore[no-untyped-def]
    """The web page
    ---
    get:
      summary: The web page (upload, progress, downloads)
      security: []
      responses:
        200:
          description: HTML
          content:
            text/html: {schema: {type: string}}
    """
    response = send_from_directory(STATIC, "index.html", mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return response
