"""fsguard's HTTP side: health, readiness, metrics, the JSON admin API and the supervisors' console.

Flask on gevent's pywsgi, in the same hub as the calls. Flask (Werkzeug + Jinja2) was chosen over
Falcon and Bottle because the console needs what it brings in one well-kept package: Jinja2
templates with autoescape, blueprints to split the API by area, Werkzeug's Range-capable file
responses for recordings, and a test-free WSGI app that runs unchanged on pywsgi.

    /healthz /readyz /metrics   no auth, never queued behind the API (fsguard/ops/web/api/ops.py;
                                 readiness's checks, also the console's tile: fsguard/ops/web/readiness.py)
    /api/...                     ``Authorization: Bearer <http.token>`` (fsguard/ops/web/api/)
    /console/...                 operators' sessions (fsguard/ops/web/console.py)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from flask import Flask, current_app

if TYPE_CHECKING:
    from fsguard.service.app import App
    from fsguard.service.server import CallServer

log = structlog.get_logger("fsguard.http")


@dataclass
class WebContext:
    """What every handler reaches through ``web()``: the running app and call server."""

    app: App
    server: CallServer | None
    started: float = field(default_factory=time.time)
    #: true while ``POST /api/reload`` runs (its reload is audited as the API's, not as a signal's)
    api_reloading: bool = False


def web() -> WebContext:
    return current_app.extensions["fsguard"]  # type: ignore[no-any-return]


def create_app(app: App, server: CallServer | None = None) -> Flask:
    from fsguard.ops.web import api, console
    from fsguard.ops.web.core import Limits

    flask = Flask(__name__, static_url_path="/console/static")
    flask.url_map.strict_slashes = False
    flask.extensions["fsguard"] = WebContext(app, server)
    flask.extensions["fsguard.limits"] = Limits()
    flask.config.update(MAX_CONTENT_LENGTH=None, TEMPLATES_AUTO_RELOAD=False)
    api.install(flask)
    console.install(flask)
    return flask


__all__ = ["create_app", "web", "WebContext", "Any"]
