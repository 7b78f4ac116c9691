"""Recordings (fsguard/rules/recordings.py does the work; the CLI's equivalent is ``fsguard recordings ...``):
list, show, hold and release with a reason, what the next purge would delete, and the audio
itself (Range requests answered, so a browser can seek)."""

from __future__ import annotations

import os
from typing import Annotated, Any, Callable, Literal, Optional

import structlog
from flask import Blueprint, Response, send_file
from pydantic import Field

from fsguard.store import audit
from fsguard.rules import recordings
from fsguard.ops.web import web
from fsguard.ops.web.api import actor, region
from fsguard.ops.web.core import HTTPError, Input, Line, bad_request, check_uuid, json_response, off_hub

log = structlog.get_logger("fsguard.http")
bp = Blueprint("recordings", __name__)

Status = Literal["recording", "complete", "missing", "unreadable"]


def guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A recordings call with its errors as HTTP answers (404 not found, 409 not possible)."""
    try:
        return fn(web().app.db, *args, **kwargs)
    except recordings.NotFound as exc:
        raise HTTPError(404, str(exc)) from None
    except recordings.RecordingError as exc:
        raise HTTPError(409, str(exc)) from None


class RecordingFilters(Input):
    """``?number=&held=true&expired=true&status=&limit=50``"""

    number: Optional[Annotated[Line, Field(max_length=64)]] = None
    held: Optional[bool] = None
    expired: bool = False
    status: Optional[Status] = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


def find_recordings(f: RecordingFilters) -> list[dict[str, Any]]:
    try:
        return recordings.list_recordings(web().app.db, number=f.number, held=f.held, expired=f.expired,
                                          status=f.status, limit=f.limit, region=region())
    except recordings.RecordingError as exc:
        raise bad_request(f"number: {exc}") from None


@bp.get("/api/recordings")
def list_recordings() -> Response:
    found = off_hub(find_recordings, RecordingFilters.from_query())
    return json_response({"recordings": found, "count": len(found)})


@bp.get("/api/recordings/purge-preview")
def purge_preview() -> Response:
    """What ``fsguard recordings purge`` would delete now (and what a legal hold keeps)."""
    report = off_hub(lambda: recordings.purge(web().app.db, web().app.settings, dry_run=True))
    return json_response(report.as_dict())


@bp.get("/api/recordings/<uuid>")
def show_recording(uuid: str) -> Response:
    return json_response(off_hub(guarded, recordings.show, check_uuid(uuid)))


class HoldBody(Input):
    """``{"reason": "case 2026-114, police request"}``"""

    reason: Annotated[Line, Field(max_length=512)]
    by: Optional[Annotated[Line, Field(max_length=64)]] = None


class ReleaseBody(Input):
    reason: Annotated[Line, Field(max_length=512)] = ""
    by: Optional[Annotated[Line, Field(max_length=64)]] = None


def hold_as(who: str, via: audit.Via, uuid: str, reason: str) -> dict[str, Any]:
    data: dict[str, Any] = guarded(recordings.hold, check_uuid(uuid), reason, by=who)
    audit.record_now(web().app.db, actor=who, action="recording.hold", subject=data["uuid"], reason=reason, via=via)
    return data


def release_as(who: str, via: audit.Via, uuid: str, reason: str) -> dict[str, Any]:
    data: dict[str, Any] = guarded(recordings.release, check_uuid(uuid), by=who)
    audit.record_now(web().app.db, actor=who, action="recording.release", subject=data["uuid"], reason=reason,
                     via=via)
    return data


@bp.post("/api/recordings/<uuid>/hold")
def hold_recording(uuid: str) -> Response:
    """No purge or erasure touches a held recording until it is released."""
    b = HoldBody.from_body()
    return json_response(hold_as(actor({"by": b.by}), "api", uuid, b.reason))


@bp.post("/api/recordings/<uuid>/release")
def release_recording(uuid: str) -> Response:
    b = ReleaseBody.from_body()
    return json_response(release_as(actor({"by": b.by}), "api", uuid, b.reason))


def audio_response(uuid: str) -> Response:
    """The recording's file, with Range support (a browser's audio element seeks with it).

    Only a file inside ``recording.dir`` is served: a row pointing elsewhere is refused."""
    data = off_hub(guarded, recordings.show, check_uuid(uuid))
    root = recordings.recording_root(web().app.settings.recording)
    path = data["path"]
    if not recordings._inside(root, path):
        raise HTTPError(403, f"the recording's file is outside recording.dir ({root}); not served")
    if not os.path.isfile(path):
        raise HTTPError(404, f"the recording's file is not there ({data['status']})")
    mimetype = "audio/wav" if path.endswith(".wav") else ("audio/mpeg" if path.endswith(".mp3") else None)
    response = send_file(path, mimetype=mimetype or "application/octet-stream", conditional=True, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/api/recordings/<uuid>/audio")
def recording_audio(uuid: str) -> Response:
    return audio_response(uuid)
