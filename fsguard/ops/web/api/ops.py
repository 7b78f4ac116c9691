"""Health, readiness, metrics, the API's index, the node's status and a policy reload."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fsguard import __version__
from fsguard.store import audit
from fsguard.ops.web import readiness, web
from fsguard.ops.web.api import actor
from fsguard.ops.web.core import HTTPError, Input, json_response

bp = Blueprint("ops", __name__)

@bp.get("/healthz")
def healthz() -> Response:
    """The process is up (a liveness probe)."""
    return json_response({"status": "ok", "node": web().app.settings.node.id, "version": __version__})


@bp.get("/readyz")
def readyz() -> Response:
    """The database answers, calls are decided on a current policy, and the Event Socket listener
    takes calls (a readiness probe; the console's readiness tile shows the same checks)."""
    app = web().app
    checks = readiness.checks(app, web().server)
    ready = all(v == "ok" for v in checks.values())
    return json_response({"ready": ready, "node": app.settings.node.id, "checks": checks}, 200 if ready else 503)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(web().app.metrics.registry), 200, content_type=CONTENT_TYPE_LATEST)


@bp.get("/api")
def index() -> Response:
    endpoints = []
    for rule in current_app.url_map.iter_rules():
        if not rule.rule.startswith("/api"):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            endpoints.append(f"{method} {path}")
    return json_response({"endpoints": sorted(endpoints, key=lambda e: (e.split(" ")[1], e))})


@bp.get("/api/status")
def status() -> Response:
    app, server = web().app, web().server
    policy = app.settings.policy
    return json_response({
        "node": app.settings.node.id, "version": __version__,
        "uptime_seconds": round(time.time() - web().started, 1),
        "stages": [s.name for s in app.pipeline.stages],
        "enforce": policy.enforce, "enforce_stages": policy.enforce_stages,
        "shadow_stages": [s.name for s in app.pipeline.stages if not policy.enforced(s.name)],
        "calls": {"active": server.active if server else None, "deciding": len(app.deciding),
                  "followed": len(app.held), "max": app.settings.esl.max_calls},
        "stopping": bool(server and server.stopping),
        "config": str(app.settings.source) if app.settings.source else None})


class ReloadBody(Input):
    by: str | None = None
    reason: str = ""


@bp.post("/api/reload")
def reload() -> Response:
    """The same as ``systemctl reload fsguard`` (SIGHUP): re-read the policy, keep the calls."""
    body = ReloadBody.from_body()
    stages = reload_policy(actor({"by": body.by}), via="api", reason=body.reason)
    return json_response({"reloaded": True, "stages": stages})


def reload_policy(who: str, *, via: audit.Via, reason: str = "") -> list[str]:
    """Reload and write the attempt to the audit trail; HTTPError 409 when it fails."""
    app, server = web().app, web().server
    if server is None or server.on_reload is None:
        raise HTTPError(409, "this fsguard was not started with a configuration it can re-read")
    result: dict[str, Any] = {}

    def observe(event: str) -> None:
        if event in ("reloaded", "reload_failed"):
            result["event"] = event

    server.observers.append(observe)
    web().api_reloading = True
    try:
        server.reload()
    finally:
        web().api_reloading = False
        server.observers.remove(observe)
    ok = result.get("event") == "reloaded"
    error = None if ok else (getattr(server.on_reload, "last_error", None) or "see fsguard's log")
    with app.db.begin() as session:
        audit.record(session, actor=who, action="policy.reload" if ok else "policy.reload_failed",
                     subject=app.settings.node.id, reason=reason, via=via, details={"error": error} if error else None)
    if not ok:
        raise HTTPError(409, f"reload failed, the previous policy stays: {error}")
    return [s.name for s in app.pipeline.stages]
