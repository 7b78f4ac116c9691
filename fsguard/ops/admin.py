"""The HTTP side of fsguard: health, readiness, Prometheus metrics, the JSON admin API and the console.

    GET /healthz      the process is up (for a liveness probe)
    GET /readyz       the database answers and the Event Socket listener accepts calls
    GET /metrics      Prometheus text
    /api/...          the admin API, mirroring the CLI; every request needs
                      ``Authorization: Bearer <http.token>``; off when no token is set
    /console/...      the supervisors' console; off while no operator exists

It lives in fsguard/ops/web/ (Flask on gevent's pywsgi, split by area); this module keeps the names
the rest of fsguard imports.
"""

from __future__ import annotations

from fsguard.ops.web.core import HTTPError
from fsguard.ops.web.server import AdminServer

__all__ = ["AdminServer", "HTTPError"]
