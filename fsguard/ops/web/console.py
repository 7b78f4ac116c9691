"""The supervisors' console: server-rendered pages on the admin listener, under ``/console``.

Off (404) while no operator exists (``fsguard operators add NAME --role ...``). Every page needs a
logged-in operator (a session cookie: HttpOnly, SameSite=Strict, Secure behind TLS); every form
carries the session's CSRF token, checked on each POST; roles are checked on the server for
every page and every action (``needs``), whatever the page shows. Templates are Jinja2 with
autoescape: a caller's name is attacker-supplied text and is shown as text. Changes go through
the same functions as the API (fsguard/ops/web/api/) and are written to the audit trail with
``via="console"``.
"""

from __future__ import annotations

import hmac
import io
import secrets
import time
from collections import OrderedDict
from datetime import datetime
from functools import wraps
from typing import Annotated, Any, Callable, Literal, Optional

import structlog
from flask import Blueprint, Flask, Response, g, redirect, render_template, request, url_for
from pydantic import Field

from fsguard.store import audit, records
from fsguard.rules import lists
from fsguard.ops import operators
from fsguard.ops.web import readiness, web
from fsguard.ops.web.core import MAX_UPLOAD, HTTPError, Input, Line, bad_request, check_uuid, off_hub

log = structlog.get_logger("fsguard.console")
bp = Blueprint("console", __name__, url_prefix="/console")

COOKIE = "fsguard_session"
LOGIN_COOKIE = "fsguard_login"
#: how long "there is an operator" is remembered (an empty table is asked again at every request)
ENABLED_TTL = 5.0


def console_enabled(app: Any) -> bool:
    """The console is on once an operator exists."""
    now = time.monotonic()
    checked = getattr(app, "_console_checked", 0.0)
    if checked and now - checked < ENABLED_TTL:
        return True
    try:
        with app.db.begin() as session:
            on = operators.count(session) > 0
    except Exception:  # noqa: BLE001 - the database being down answers elsewhere (readyz, the pages)
        on = bool(checked)
    app._console_checked = now if on else 0.0
    return on


def install(flask: Flask) -> None:
    flask.register_blueprint(bp)
    flask.jinja_env.globals.update(fmt_time=fmt_time, csrf=lambda: g.who.csrf_token if g.get("who") else "")
    flask.jinja_env.filters["short"] = lambda s, n=60: (s or "")[:n] + ("…" if s and len(s) > n else "")


# ------------------------------------------------------------------ sessions and roles


class Messages:
    """One-time notes shown on the next page ("caller blocked"), per session, in memory."""

    def __init__(self, size: int = 2000) -> None:
        self.notes: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
        self.size = size

    def add(self, key: str, kind: str, text: str) -> None:
        self.notes.setdefault(key, []).append((kind, text))
        self.notes.move_to_end(key)
        while len(self.notes) > self.size:
            self.notes.popitem(last=False)

    def take(self, key: str) -> list[tuple[str, str]]:
        return self.notes.pop(key, [])


MESSAGES = Messages()


def note(kind: str, text: str) -> None:
    MESSAGES.add(g.token_key, kind, text)


@bp.before_request
def _session() -> Any:
    app = web().app
    if not console_enabled(app):
        raise HTTPError(404, "the console is off: add an operator with 'fsguard operators add NAME --role admin'")
    g.who = None
    token = request.cookies.get(COOKIE, "")
    if token:
        g.who = off_hub(_who, token)
        g.token_key = operators._hash_token(token)
    if request.endpoint == "console.login":
        return None
    if g.who is None:
        if request.method == "GET":
            return redirect(url_for("console.login", next=request.full_path if request.args else request.path))
        raise HTTPError(401, "your session has ended: log in again")
    if request.method == "POST":
        given = request.form.get("csrf_token", "") or request.headers.get("X-CSRF-Token", "")
        if not given or not hmac.compare_digest(given, g.who.csrf_token):
            log.warning("console.csrf_refused", operator=g.who.name, path=request.path)
            raise HTTPError(403, "this form is stale or did not come from the console (CSRF check failed): "
                                 "reload the page and try again")
    return None


def _who(token: str) -> operators.Who | None:
    with web().app.db.begin() as session:
        return operators.who(session, token)


def needs(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The operator's role must be at least ``role`` (checked on the server, whatever the page shows)."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            who: operators.Who | None = g.get("who")
            if who is None or not who.can(role):
                log.warning("console.role_refused", operator=who.name if who else None, role=who.role if who else None,
                            needs=role, path=request.path, method=request.method)
                raise HTTPError(403, f"this needs the {role} role (you are "
                                     f"{who.role if who else 'not logged in'})")
            return fn(*args, **kwargs)
        inner.needs_role = role  # type: ignore[attr-defined]
        return inner
    return wrap


def page(template: str, **values: Any) -> str:
    key = g.get("token_key")
    return render_template(template, who=g.get("who"), notes=MESSAGES.take(key) if key else [],
                           node=web().app.settings.node.id, **values)


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
        "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = response.headers.get("Cache-Control", "no-store")
    return response


def error_page(status: int, message: str, headers: list[tuple[str, str]]) -> Response:
    try:
        body = render_template("error.html", status=status, message=message, who=g.get("who"), notes=[],
                               node=web().app.settings.node.id)
    except Exception:  # noqa: BLE001 - an error page must not fail
        from markupsafe import escape

        body = f"<!doctype html><title>{status}</title><p>{escape(message)}</p>"
    response = Response(body, status, content_type="text/html; charset=utf-8")
    for name, value in headers:
        response.headers[name] = value
    return _headers(response)


def _secure() -> bool:
    return request.is_secure or web().app.settings.http.behind_tls


# ------------------------------------------------------------------ login


class LoginForm(Input):
    name: Annotated[Line, Field(max_length=64)] = ""
    password: Annotated[str, Field(max_length=1024)] = ""
    login_token: str = ""
    next: str = ""


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Login with a double-submit token against login CSRF (there is no session to bind one to yet)."""
    problem = ""
    if request.method == "POST":
        form = LoginForm.parse(dict(request.form.items()))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie, form.login_token):
            problem = "the login form expired: try again"
        else:
            result = off_hub(_login, form.name, form.password, request.remote_addr or "")
            if result.who is not None:
                log.info("console.login", operator=result.who.name, role=result.who.role, client=request.remote_addr)
                target = form.next if form.next.startswith("/console/") and "//" not in form.next else "/console/"
                response = redirect(target, 303)
                response.set_cookie(COOKIE, result.token, max_age=operators.SESSION_SECONDS, httponly=True,
                                    samesite="Strict", secure=_secure(), path="/")
                response.delete_cookie(LOGIN_COOKIE, path="/console/login")
                return response
            log.warning("console.login_failed", name=form.name[:64], client=request.remote_addr,
                        problem=result.problem)
            problem = result.problem
    token = secrets.token_urlsafe(24)
    body = render_template("login.html", problem=problem, login_token=token, who=None, notes=[],
                           next=request.values.get("next", ""), node=web().app.settings.node.id)
    response = Response(body, 401 if problem else 200, content_type="text/html; charset=utf-8")
    response.set_cookie(LOGIN_COOKIE, token, max_age=900, httponly=True, samesite="Strict", secure=_secure(),
                        path="/console/login")
    return response


def _login(name: str, password: str, client: str) -> operators.LoginResult:
    with web().app.db.begin() as session:
        return operators.login(session, name, password, client=client)


@bp.post("/logout")
def logout() -> Any:
    token = request.cookies.get(COOKIE, "")

    def end() -> None:
        with web().app.db.begin() as session:
            operators.logout(session, token)

    off_hub(end)
    log.info("console.logout", operator=g.who.name)
    response = redirect(url_for("console.login"), 303)
    response.delete_cookie(COOKIE, path="/")
    return response


@bp.get("/")
def home() -> Any:
    return redirect(url_for("console.glance"))


# ------------------------------------------------------------------ at a glance


@bp.get("/glance")
@needs("viewer")
def glance() -> Any:
    from fsguard.ops.web import charts

    q = GlanceQuery.from_query()
    facts = off_hub(charts.glance_facts, web().app, q.hours)
    facts["ready"] = readiness.checks(web().app, web().server)
    facts["backlog"] = len(getattr(web().app.writer, "queue", ()) or ())
    return page("glance.html", facts=facts, hours=q.hours, charts=charts, bucket=charts.bucket_for(q.hours))


class GlanceQuery(Input):
    hours: Annotated[int, Field(ge=1, le=48)] = 3


# ------------------------------------------------------------------ calls


@bp.get("/calls")
@needs("viewer")
def calls() -> Any:
    from fsguard.ops.web.api.calls import CallFilters, find_calls

    args = {k: v for k, v in request.args.items() if v != ""}
    filters = CallFilters.parse(args)
    found = off_hub(find_calls, web().app.db, filters, web().app.settings.node.default_region)
    return page("calls.html", calls=found, f=filters, args=args)


@bp.get("/calls/live")
@needs("viewer")
def live() -> Any:
    app = web().app
    rows = []
    for phase, greenlets in (("deciding", list(app.deciding)), ("held", list(app.held))):
        for gl in greenlets:
            ref = getattr(gl, "fsguard_call", None)      # a weak reference: the call's greenlet owns it
            call = ref() if ref is not None else None
            if call is None:
                continue
            rows.append({"phase": phase, "uuid": call.uuid, "ani": call.ani or call.presented_number,
                         "caller_name": call.caller_name, "dnis": call.dnis, "direction": call.direction,
                         "action": str(call.final_action or "")})
    return page("live.html", rows=rows, max_calls=app.settings.esl.max_calls)


@bp.get("/calls/<uuid>")
@needs("viewer")
def call(uuid: str) -> Any:
    from fsguard.ops.web.api.calls import call_with_explanation

    data = off_hub(call_with_explanation, web().app.db, check_uuid(uuid))
    entries: list[dict[str, Any]] = []
    if data.get("ani"):
        def read() -> list[dict[str, Any]]:
            with web().app.db.begin() as session:
                return [lists.entry_dict(e) for e in lists.entries_for(session, data["ani"])]
        entries = off_hub(read)
    return page("call.html", call=data, entries=entries, describe=lists.describe)


class FromCallForm(Input):
    csrf_token: str = ""
    kind: Literal["block", "allow"]
    level: Optional[Annotated[int, Field(ge=0, le=lists.MAX_LEVEL)]] = None
    reason: Annotated[Line, Field(max_length=1000)] = ""
    expires: Optional[Annotated[Line, Field(max_length=40)]] = None
    scope: Literal["all", "dnis"] = "all"


@bp.post("/calls/<uuid>/list")
@needs("supervisor")
def list_from_call(uuid: str) -> Any:
    """Block or allow the caller of a call (like ``fsguard lists add --from-call UUID``)."""
    from fsguard.ops.web.api.lists import add_entry_as

    form = FromCallForm.parse(_form())
    call = off_hub(records.find_call, web().app.db, check_uuid(uuid))
    if call is None:
        raise HTTPError(404, f"no call {uuid}")
    if not call.ani:
        raise bad_request(f"call {call.uuid} has no caller number to {form.kind} (anonymous or unreadable)")
    reason = form.reason or f"caller of call {call.uuid}"
    level = (form.level if form.level is not None else 8) if form.kind == "block" else None
    data, replaced = add_entry_as(g.who.name, "console", number=call.ani, kind=form.kind, level=level, reason=reason,
                                  expires=form.expires, dnis=call.dnis if form.scope == "dnis" else None,
                                  action=None, source="console")
    note("ok", f"added: {lists.describe(data)}" + (f" (replaced: {lists.describe(replaced)})" if replaced else ""))
    return redirect(url_for("console.call", uuid=call.uuid), 303)


def _form() -> dict[str, Any]:
    return {k: v for k, v in request.form.items() if v != ""}


# ------------------------------------------------------------------ lists


class ListPage(Input):
    kind: Optional[Literal["allow", "block", "dno"]] = None
    source: Optional[Annotated[str, Field(max_length=32, pattern=r"^[a-z_]+$")]] = None
    number: Optional[Annotated[Line, Field(max_length=64)]] = None
    all: bool = False
    limit: Annotated[int, Field(ge=1, le=5000)] = 500


@bp.get("/lists")
@needs("viewer")
def lists_page() -> Any:
    from fsguard.ops.web.api.lists import pattern

    q = ListPage.parse({k: v for k, v in request.args.items() if v != ""})
    prefix = pattern(q.number)[0] if q.number else None

    def read() -> list[dict[str, Any]]:
        with web().app.db.begin() as session:
            rows = lists.all_entries(session, kind=q.kind, source=q.source, include_expired=q.all,
                                     limit=None if prefix else q.limit)
            if prefix:
                rows = [e for e in rows if e.number.startswith(prefix)][:q.limit]
            return [lists.entry_dict(e) for e in rows]

    return page("lists.html", entries=off_hub(read), q=q)


class EntryForm(Input):
    csrf_token: str = ""
    number: Annotated[Line, Field(max_length=64)]
    kind: Literal["allow", "block", "dno"]
    level: Optional[Annotated[int, Field(ge=0, le=lists.MAX_LEVEL)]] = None
    reason: Annotated[Line, Field(max_length=1000)] = ""
    expires: Optional[Annotated[Line, Field(max_length=40)]] = None
    dnis: Optional[Annotated[Line, Field(max_length=64)]] = None
    action: Optional[Annotated[Line, Field(max_length=128)]] = None


@bp.post("/lists/add")
@needs("supervisor")
def lists_add() -> Any:
    from fsguard.ops.web.api.lists import add_entry_as

    f = EntryForm.parse(_form())
    data, replaced = add_entry_as(g.who.name, "console", number=f.number, kind=f.kind, level=f.level,
                                  reason=f.reason, expires=f.expires, dnis=f.dnis, action=f.action,
                                  source="console")
    note("ok", f"added: {lists.describe(data)}")
    return redirect(url_for("console.lists_page"), 303)


class RemoveForm(Input):
    csrf_token: str = ""
    number: Annotated[Line, Field(max_length=64)]
    dnis: Optional[Annotated[Line, Field(max_length=64)]] = None
    kind: Optional[Literal["allow", "block", "dno"]] = None
    reason: Annotated[Line, Field(max_length=1000)] = ""
    back: Optional[Annotated[str, Field(max_length=200, pattern=r"^/console/[A-Za-z0-9/_.+%-]*$")]] = None


@bp.post("/lists/remove")
@needs("supervisor")
def lists_remove() -> Any:
    from fsguard.ops.web.api.lists import remove_entries_as

    f = RemoveForm.parse(_form())
    gone = remove_entries_as(g.who.name, "console", f.number, dnis=f.dnis, kind=f.kind, reason=f.reason)
    for entry in gone:
        note("ok", f"removed: {lists.describe(entry)}")
    return redirect(f.back or url_for("console.lists_page"), 303)


@bp.get("/lists/export.csv")
@needs("viewer")
def lists_export() -> Any:
    include_expired = request.args.get("all") == "true"

    def rows() -> str:
        with web().app.db.begin() as session:
            return "".join(lists.csv_text(lists.export_rows(session, include_expired=include_expired)))

    response = Response(off_hub(rows), 200, content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = 'attachment; filename="fsguard-lists.csv"'
    return response


@bp.get("/lists/import")
@needs("supervisor")
def lists_import_form() -> Any:
    return page("import.html", what="lists", report=None)


@bp.post("/lists/import")
@needs("supervisor")
def lists_import() -> Any:
    """A CSV import (the CLI's ``lists import`` code): every row checked, bad rows listed by line;
    nothing is written while a row is bad unless "skip bad rows" is ticked."""
    text = _upload()
    skip_bad = request.form.get("skip_bad") == "on"
    dry_run = request.form.get("dry_run") == "on"
    who = g.who.name

    def run() -> dict[str, Any]:
        report = lists.read_csv(io.StringIO(text, newline=""), region=web().app.settings.node.default_region,
                                added_by=who)
        result = {"rows": report.rows, "valid": len(report.specs), "errors": report.errors[:500],
                  "more_errors": max(0, len(report.errors) - 500), "warnings": report.warnings[:100],
                  "written": 0, "dry_run": dry_run, "skip_bad": skip_bad}
        if (report.errors and not skip_bad) or dry_run:
            return result
        with web().app.db.begin() as session:
            result["written"] = lists.import_entries(session, report.specs)
            audit.record(session, actor=who, action="list.import", subject=f"{result['written']} entries",
                         via="console", details={"rows": report.rows, "bad_rows": len(report.errors)})
        return result

    result = off_hub(run)
    status = 200 if not result["errors"] or result["written"] or result["dry_run"] else 400
    if request.headers.get("Accept", "").startswith("application/json"):
        from fsguard.ops.web.core import json_response

        return json_response(result, status)
    return page("import.html", what="lists", report=result), status


def _upload() -> str:
    if (request.content_length or 0) > MAX_UPLOAD:
        raise HTTPError(413, f"the file is too large (at most {MAX_UPLOAD // (1024 * 1024)} MB)")
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise bad_request("choose a CSV file to import")
    raw = upload.read(MAX_UPLOAD + 1)
    if len(raw) > MAX_UPLOAD:
        raise HTTPError(413, f"the file is too large (at most {MAX_UPLOAD // (1024 * 1024)} MB)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_request(f"{upload.filename} is not UTF-8 text") from None


# ------------------------------------------------------------------ customers


class CustomerPage(Input):
    number: Optional[Annotated[Line, Field(max_length=64)]] = None
    vip: bool = False
    limit: Annotated[int, Field(ge=1, le=5000)] = 500


@bp.get("/customers")
@needs("viewer")
def customers_page() -> Any:
    from fsguard.rules import customers
    from fsguard.ops.web.api.customers import customer_listing, customer_number

    q = CustomerPage.parse({k: v for k, v in request.args.items() if v != ""})
    if q.number:
        number = customer_number(q.number)

        def read() -> dict[str, Any]:
            with web().app.db.begin() as session:
                row = customers.get(session, number=number)
                found = [customers.CustomerInfo.from_row(row).as_dict()] if row else []
                total, numbers_ = customers.count(session)
            return {"customers": found, "count": len(found), "total": total, "numbers": numbers_}
        data = off_hub(read)
    else:
        data = off_hub(customer_listing, q.vip, q.limit)
    return page("customers.html", data=data, q=q)


class CustomerForm(Input):
    csrf_token: str = ""
    numbers: Annotated[Line, Field(max_length=1000)] = ""
    account_id: Optional[Line] = None
    name: Optional[Line] = None
    vip: Optional[Literal["on", "off", "true", "false"]] = None
    queue: Optional[Line] = None
    agent: Optional[Line] = None
    region: Optional[Line] = None


@bp.post("/customers/save")
@needs("supervisor")
def customers_save() -> Any:
    from fsguard.ops.web.api.customers import save_customer_as

    f = CustomerForm.parse(_form())
    fields = {k: getattr(f, k) for k in ("account_id", "name", "queue", "agent", "region") if getattr(f, k)}
    fields["vip"] = f.vip in ("on", "true")
    raw = [n for n in f.numbers.replace(",", ";").split(";") if n.strip()]
    saved = save_customer_as(g.who.name, "console", raw, fields, "console")
    note("ok", f"{'added' if saved.created else 'updated'} customer {saved.customer.customer_id}")
    return redirect(url_for("console.customers_page"), 303)


class CustomerRemoveForm(Input):
    csrf_token: str = ""
    number: Annotated[Line, Field(max_length=64)]
    reason: Annotated[Line, Field(max_length=1000)] = ""


@bp.post("/customers/remove")
@needs("supervisor")
def customers_remove() -> Any:
    from fsguard.ops.web.api.customers import customer_number, remove_customer_number_as

    f = CustomerRemoveForm.parse(_form())
    note("ok", remove_customer_number_as(g.who.name, "console", customer_number(f.number), f.reason))
    return redirect(url_for("console.customers_page"), 303)


class _RollBack(Exception):
    """Leaves an import's transaction without writing anything."""


@bp.get("/customers/import")
@needs("supervisor")
def customers_import_form() -> Any:
    return page("import.html", what="customers", report=None)


@bp.post("/customers/import")
@needs("supervisor")
def customers_import() -> Any:
    """The CLI's ``customers import`` code: all rows checked first; a bad file changes nothing
    unless "skip bad rows" is ticked."""
    from fsguard.rules import customers

    text = _upload()
    skip_bad = request.form.get("skip_bad") == "on"
    dry_run = request.form.get("dry_run") == "on"
    who = g.who.name

    def run() -> dict[str, Any]:
        out: dict[str, Any] = {"warnings": [], "dry_run": dry_run, "skip_bad": skip_bad, "more_errors": 0}
        try:
            with web().app.db.begin() as session:
                result = customers.import_csv(session, io.StringIO(text, newline=""),
                                              web().app.settings.node.default_region, source="console",
                                              skip_invalid=skip_bad)
                out.update(rows=result.rows, created=result.created, updated=result.updated,
                           errors=[(None, e) for e in result.errors[:500]], written=result.rows)
                if dry_run or (result.errors and not skip_bad):
                    out["written"] = 0
                    raise _RollBack   # a bad file or a check changes nothing
                audit.record(session, actor=who, action="customer.import", subject=f"{result.rows} rows",
                             via="console", details={"created": result.created, "updated": result.updated})
        except _RollBack:
            pass
        except customers.CustomerError as exc:
            out.update(rows=0, written=0, errors=[(None, str(exc))])
        return out

    result = off_hub(run)
    status = 200 if not result["errors"] or result["written"] or result["dry_run"] else 400
    if request.headers.get("Accept", "").startswith("application/json"):
        from fsguard.ops.web.core import json_response

        return json_response(result, status)
    return page("import.html", what="customers", report=result), status


# ------------------------------------------------------------------ recordings


@bp.get("/recordings")
@needs("viewer")
def recordings_page() -> Any:
    from fsguard.ops.web.api.recordings import RecordingFilters, find_recordings

    f = RecordingFilters.parse({k: v for k, v in request.args.items() if v != ""})
    return page("recordings.html", recordings=off_hub(find_recordings, f), f=f)


@bp.get("/recordings/purge")
@needs("viewer")
def recordings_purge() -> Any:
    from fsguard.rules import recordings

    report = off_hub(lambda: recordings.purge(web().app.db, web().app.settings, dry_run=True))
    return page("purge.html", report=report.as_dict())


def may_listen() -> bool:
    who: operators.Who = g.who
    return who.can("supervisor") or web().app.settings.http.viewers_may_listen


@bp.get("/recordings/<uuid>")
@needs("viewer")
def recording(uuid: str) -> Any:
    from fsguard.rules import recordings
    from fsguard.ops.web.api.recordings import guarded

    data = off_hub(guarded, recordings.show, check_uuid(uuid))
    return page("recording.html", rec=data, may_listen=may_listen(), timeline=timeline(data))


def timeline(rec: dict[str, Any]) -> dict[str, Any]:
    """The masked intervals as shares of the recording's length, for the bar under the player."""
    length = rec.get("duration") or 0.0
    if not length and rec.get("ended_at") and rec.get("started_at"):
        length = (datetime.fromisoformat(rec["ended_at"]) - datetime.fromisoformat(rec["started_at"])).total_seconds()
    spans = []
    for m in rec.get("masks") or []:
        start = m.get("from_second") or 0.0
        end = m.get("to_second") if m.get("to_second") is not None else length
        if length:
            spans.append({"left": max(0.0, min(100.0, 100 * start / length)),
                          "width": max(0.5, min(100.0, 100 * (end - start) / length)),
                          "label": f"masked {start:.1f}s – {end:.1f}s"})
    return {"length": length, "spans": spans}


@bp.get("/recordings/<uuid>/audio")
@needs("viewer")
def recording_audio(uuid: str) -> Any:
    from fsguard.ops.web.api.recordings import audio_response

    if not may_listen():
        raise HTTPError(403, "viewers may not listen to recordings here (http.viewers_may_listen)")
    check_uuid(uuid)
    audit_listen(uuid)
    return audio_response(uuid)


def audit_listen(uuid: str) -> None:
    """Playing a recording is logged (not audited as a change: it changes nothing)."""
    if request.headers.get("Range", "bytes=0-").startswith("bytes=0-"):
        log.info("console.recording_played", operator=g.who.name, call=uuid)


class HoldForm(Input):
    csrf_token: str = ""
    action: Literal["hold", "release"]
    reason: Annotated[Line, Field(max_length=512)] = ""


@bp.post("/recordings/<uuid>/hold")
@needs("supervisor")
def recording_hold(uuid: str) -> Any:
    from fsguard.ops.web.api.recordings import hold_as, release_as

    f = HoldForm.parse(_form())
    if f.action == "hold":
        if not f.reason:
            raise bad_request("reason: a legal hold needs a reason (the case or request it is kept for)")
        off_hub(hold_as, g.who.name, "console", uuid, f.reason)
        note("ok", "the recording is under legal hold")
    else:
        off_hub(release_as, g.who.name, "console", uuid, f.reason)
        note("ok", "the legal hold is lifted")
    return redirect(url_for("console.recording", uuid=uuid), 303)


# ------------------------------------------------------------------ outbound


@bp.get("/outbound")
@needs("viewer")
def outbound_page() -> Any:
    from fsguard.ops.web.api.outbound import attempts_report, dialled, frozen_rows

    number = request.args.get("number", "").strip()
    report = off_hub(attempts_report, dialled(number), 50) if number else None
    return page("outbound.html", frozen=off_hub(frozen_rows), report=report, number=number)


class FreezeForm(Input):
    csrf_token: str = ""
    number: Annotated[Line, Field(max_length=64)]
    reason: Annotated[Line, Field(max_length=1000)] = ""
    days: Optional[Annotated[float, Field(gt=0, le=3650)]] = None
    action: Literal["freeze", "unfreeze"]


@bp.post("/outbound/freeze")
@needs("supervisor")
def outbound_freeze() -> Any:
    from fsguard.ops.web.api.outbound import freeze_as, unfreeze_as

    f = FreezeForm.parse(_form())
    if f.action == "freeze":
        new, _ = freeze_as(g.who.name, "console", f.number, f.reason, f.days)
        note("ok", f"{new.number} frozen until {fmt_time(new.until.isoformat())}")
    else:
        lifted = unfreeze_as(g.who.name, "console", f.number, f.reason)
        note("ok", f"{lifted[0].number} unfrozen")
    return redirect(url_for("console.outbound_page", number=f.number), 303)


# ------------------------------------------------------------------ audit


class AuditPage(Input):
    actor: Optional[Annotated[Line, Field(max_length=128)]] = None
    action: Optional[Annotated[str, Field(max_length=64, pattern=r"^[a-z_.]+$")]] = None
    subject: Optional[Annotated[Line, Field(max_length=256)]] = None
    via: Optional[Literal["cli", "api", "console"]] = None
    since: Optional[Annotated[Line, Field(max_length=40)]] = None
    limit: Annotated[int, Field(ge=1, le=5000)] = 200


@bp.get("/audit")
@needs("viewer")
def audit_page() -> Any:
    from fsguard.ops.web.core import to_time

    q = AuditPage.parse({k: v for k, v in request.args.items() if v != ""})
    since = to_time(q.since, "since")

    def read() -> list[dict[str, Any]]:
        with web().app.db.begin() as session:
            return [audit.as_dict(e) for e in audit.entries(session, since=since, actor=q.actor, action=q.action,
                                                            subject=q.subject, via=q.via, limit=q.limit)]

    return page("audit.html", entries=off_hub(read), q=q)


# ------------------------------------------------------------------ helpers


def fmt_time(value: str | datetime | None) -> str:
    """``2026-11-20 08:01:02`` (UTC), the form every page shows times in."""
    if not value:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text[:19].replace("T", " ")


