"""The app factory: wires settings, services, blueprints and error handlers."""

from __future__ import annotations

import atexit

from flask import Flask, request
from flask_cors import CORS

from . import access_log, openapi, security
from .config import Settings
from .errors import register_error_handlers
from .routes import BLUEPRINTS
from .services import EXTENSION_KEY, Services
from .uploads import UPLOAD_DIR_KEY, UploadRequest, discard_unclaimed


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    app = Flask(__name__, static_folder=None)  # the page's files are served by the web blueprint
    app.request_class = UploadRequest
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_size,
        **{UPLOAD_DIR_KEY: str(settings.inputs_dir)},
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # Chinese transcripts stay readable
    app.json.sort_keys = False  # type: ignore[attr-defined]

    services = Services.build(settings)
    app.extensions[EXTENSION_KEY] = services
    atexit.register(services.close)

    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # opted in: pages on these origins may call the API (the guide's fetch() example)
        CORS(app, origins=origins, supports_credentials=False,
             expose_headers=["Content-Disposition", "X-Output-File", "Location", "Retry-After", "X-Request-ID"])

    access_log.install(app)
    services.metrics.install(app)
    security.check_host(app, settings.allowed_hosts, settings.host)  # before the rest: a foreign Host learns nothing
    app.register_blueprint(openapi.bp)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    if services.cluster is not None:
        from .distributed.cluster import register_redis_errors

        register_redis_errors(app)
    if settings.rate_limit:  # before the key check: failed key attempts count against the client
        security.limit_rate(app, settings.rate_limit)
    if settings.api_keys:  # user or admin keys: every job then belongs to the key that created it
        security.require_api_key(app, settings.user_keys, settings.admin_keys)

    @app.teardown_request
    def _discard_unclaimed_uploads(_exc: BaseException | None) -> None:
        discard_unclaimed(request)  # type: ignore[arg-type]

    if settings.preload:
        services.preload_in_background()
    return app
