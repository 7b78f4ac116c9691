"""Recordings as an operator deals with them: where the files are, how long they are kept, and the
requests about them (list, show, hold, release, purge, pause, resume, start, stop, verify).

The CLI (``fsguard recordings ...``) and the admin API call these functions; they return plain
JSON-able dicts and raise :class:`RecordingError` with a message for the operator.

Three rules hold everywhere:

* a path is built from the date and the channel uuid only (the uuid's shape is checked); no text a
  caller controls ever reaches the file system;
* the row is handed over before the file can exist (so no file escapes retention): an operator's
  start writes it at once, a policy's goes to the call writer at the decision and is committed
  moments later, or logged whole if the database never takes it; files are only ever deleted
  inside ``recording.dir``;
* a legal hold beats everything: purge, erasure, stop.

File work (hashing a one-hour stereo WAV reads ~115 MB) runs in gevent's thread pool, so calls in
progress are never held up by it, and no database session is held while it runs.
"""

from __future__ import annotations

import calendar
import hashlib
import os
import re
import stat
import time
import wave
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import gevent
import structlog
from sqlalchemy import ColumnElement, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fsguard.rules import numbers
from fsguard.config import RecordingSettings, Settings, parse_retention
from fsguard.store.db import Database
from fsguard.esl.client import FreeSWITCHAPI, InboundError, uuid_record
from fsguard.store.models import CallRecord, StageVerdict, utcnow
from fsguard.store.models.recordings import Recording, RecordingMask
from fsguard.store.writer import Writer

log = structlog.get_logger("fsguard.recording")

#: recordings looked at per query by purge
PURGE_BATCH = 1000
#: how long pause, resume and stop wait for a recording's row that its call's writer has not
#: committed yet, and how often they look
WRITTEN_WAIT_SECONDS = 1.0
WRITTEN_POLL_SECONDS = 0.02

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_T = TypeVar("_T")


class RecordingError(Exception):
    """A request about recordings that cannot be carried out; the message says why."""


class NotFound(RecordingError):
    """No such call or recording."""


# ---------------------------------------------------------------- paths and dates


def recording_root(settings: RecordingSettings) -> Path:
    """``recording.dir`` as an absolute path: FreeSWITCH resolves a relative path against its own
    recordings directory, not fsguard's, so what is sent to it is always absolute."""
    return Path(os.path.abspath(os.path.expanduser(settings.dir)))


def recording_path(root: Path, uuid: str, when: datetime) -> str:
    """``<root>/YYYY/MM/DD/<uuid>.wav`` (UTC date). Only a well-formed channel uuid is accepted:
    it is the one part of the path that comes from the channel."""
    if not UUID_RE.match(uuid):
        raise ValueError(f"channel uuid {uuid!r} is not a uuid: no recording path is built from it")
    # one format, not four path joins: this runs on every recorded call's decision
    return os.path.join(root, f"{when.astimezone(timezone.utc):%Y/%m/%d}", f"{uuid}.wav")


def add_period(start: datetime, period: str) -> datetime:
    """``start`` plus a retention period; months and years are calendar ones (day clamped)."""
    months, seconds = parse_retention(period)
    if months:
        total = start.month - 1 + months
        year, month = start.year + total // 12, total % 12 + 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        start = start.replace(year=year, month=month, day=day)
    return start + timedelta(seconds=seconds)


def retain_until(settings: RecordingSettings, purpose: str, start: datetime) -> datetime:
    if purpose not in settings.retention:
        raise RecordingError(f"purpose {purpose!r} has no retention (recording.retention knows "
                             f"{', '.join(sorted(settings.retention))})")
    return add_period(start, settings.retention[purpose])


def party_number(direction: str, ani: str | None, dnis: str, region: str) -> str | None:
    """The outside party's number, E.164: who called us, or whom an agent called."""
    if direction == "outbound":
        return numbers.parse(dnis or "", region).e164  # read as Call.ani is (E.164 when it has a form)
    return ani


def lookup_number(raw: str, region: str) -> str:
    """E.164 of a number an operator typed to find (or erase) data. Lenient on validity: a number
    range newer than phonenumbers' metadata must still be found; only non-numbers are refused."""
    parsed = numbers.parse(raw, region)
    if parsed.anonymous or not parsed.e164:
        raise numbers.InvalidNumber(f"{raw!r} is not a telephone number")
    return parsed.e164


def in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """Run blocking file work in gevent's thread pool; the hub keeps serving calls meanwhile."""
    return gevent.get_hub().threadpool.apply(fn, args)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ file facts


@dataclass
class FileFacts:
    """What the file on disk is: complete (hashed), missing or unreadable."""

    status: str
    size_bytes: int | None = None
    sha256: str | None = None
    duration: float | None = None
    error: str = ""


def inspect_file(path: str) -> FileFacts:
    """Size, SHA-256 and duration (from the WAV header) of a recording. Blocking: use in_thread."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileFacts("missing", error="no file when the call ended: FreeSWITCH did not write it "
                                          "(check its log and that it can write to recording.dir)")
    except OSError as exc:
        return FileFacts("unreadable", error=f"cannot stat {path}: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return FileFacts("unreadable", error=f"{path} is not a regular file")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        return FileFacts("unreadable", size_bytes=st.st_size, error=f"cannot read {path}: {exc.strerror or exc}")
    duration: float | None = None
    error = ""
    try:
        with wave.open(path, "rb") as w:
            rate = w.getframerate()
            duration = round(w.getnframes() / rate, 3) if rate else None
    except (wave.Error, EOFError, OSError) as exc:
        error = f"not a readable WAV header ({exc}); size and hash are recorded"
    return FileFacts("complete", st.st_size, digest.hexdigest(), duration, error)


def _inside(root: Path, path: str) -> bool:
    absolute = os.path.abspath(path)
    return os.path.commonpath([str(root), absolute]) == str(root) and absolute != str(root)


def remove_file(path: str, root: Path) -> bool:
    """Delete one recording file; True if it was there, False if it was already gone.

    Refuses anything outside ``root`` or that is not a regular file (a directory where a
    recording should be is a problem to look at, not something to delete). Empty day, month and
    year directories left behind are removed. Blocking: use in_thread.
    """
    if not _inside(root, path):
        raise OSError(f"{path} is outside recording.dir ({root}); not touched")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path} is not a regular file; not touched")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    parent = Path(path).parent
    for _ in range(3):  # DD, MM, YYYY
        if parent == root or not _inside(root, str(parent)):
            break
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
    return True


# ------------------------------------------------------------- writing records


def queue_recording(writer: Writer, **values: Any) -> None:
    """A recording made by policy: its row goes to the call writer at the decision, committed a
    few milliseconds later in order with the call's other rows (its closing rows key on the call's
    uuid, so nothing on the call's way waits for the row's id). A row the writer cannot write is
    logged whole (``db.write_abandoned``), so the file is never without a record of it."""
    writer.submit("recording_open", values)


def open_recording(db: Database, **values: Any) -> int:
    """Write a recording's row at once (an operator's ``fsguard recordings start``, which must know
    that the row is there before FreeSWITCH is asked to record); returns its id.

    A plain INSERT ... RETURNING on a connection of its own: one statement, no unit of work."""
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")   # one statement: no BEGIN/COMMIT
        return int(conn.execute(_OPEN, values).scalar_one())


_OPEN = insert(Recording.__table__).returning(Recording.__table__.c.id)  # type: ignore[arg-type]


def finalize(db: Database, call_uuid: str, *, ended_at: datetime | None = None, abandoned: bool = False,
             note: str = "") -> dict[str, Any] | None:
    """The recording is over: stat and hash the file, close open masks. Returns the recording.

    ``abandoned``: the caller left before the call was routed; if no file was written there is
    nothing to keep and the row goes (the caller hung up as the recording was starting).
    """
    with db.begin() as s:
        rec = s.scalars(select(Recording).where(Recording.call_uuid == call_uuid,
                                                Recording.ended_at.is_(None))).first()
        if rec is None:
            return None
        rid, path = rec.id, rec.path
    facts = in_thread(inspect_file, path)
    end = ended_at or utcnow()
    with db.begin() as s:
        if facts.status == "missing" and abandoned:
            s.execute(delete(Recording).where(Recording.id == rid))
            _log_closed(call_uuid, path, facts, abandoned=True)
            return None
        s.execute(update(Recording).where(Recording.id == rid, Recording.ended_at.is_(None)).values(
            **_closing_values(facts, end, note)))
        s.execute(update(RecordingMask).where(RecordingMask.recording_id == rid,
                                              RecordingMask.ended_at.is_(None)).values(ended_at=end))
        rec = s.get(Recording, rid, populate_existing=True)
        assert rec is not None
        data = as_dict(rec)
    _log_closed(call_uuid, path, facts)
    return data


def finalize_queued(writer: Writer, call_uuid: str, path: str, *, abandoned: bool = False,
                    never_bridged: bool = False) -> str:
    """:func:`finalize` at a call's hang-up, when the stage knows its recording: the file is
    inspected (in a thread) and the closing rows, keyed by the call's uuid, go to the call writer
    with the call's own end, after the row :func:`queue_recording` queued at the decision.

    No file is no fault when the caller hung up before the recording began (``abandoned``) or
    the recording was to start at a bridge that never came (``never_bridged``): the row goes.

    Returns what became of the recording, for the call's one log line (``complete``, ``discarded
    (never bridged)``...): a line of its own per call cost as much as the call's. Only a problem
    gets a line of its own (``recording.problem``, a warning)."""
    if (abandoned or never_bridged) and not os.path.lexists(path):
        # the expected case of a call that never reached anyone: no thread needed to find nothing
        facts = FileFacts("missing")
    else:
        facts = in_thread(inspect_file, path)
    end = utcnow()
    if facts.status == "missing" and (abandoned or never_bridged):
        writer.submit("recording_discard", {"_key": call_uuid})
        return f"discarded ({'abandoned' if abandoned else 'never bridged'})"
    writer.submit("recording_end", {"_key": call_uuid, **_closing_values(facts, end, "")})
    writer.submit("mask_end", {"_key": call_uuid, "ended_at": end})
    if facts.status != "complete":
        _log_closed(call_uuid, path, facts)
    return facts.status


def _closing_values(facts: FileFacts, end: datetime, note: str) -> dict[str, Any]:
    return {"ended_at": end, "status": facts.status, "size_bytes": facts.size_bytes, "sha256": facts.sha256,
            "duration": facts.duration, "error": "; ".join(e for e in (facts.error, note) if e)}


def _log_closed(call_uuid: str, path: str, facts: FileFacts, *, abandoned: bool = False) -> None:
    """A recording finished outside a call's own line (an operator's stop, one found late, on demand)."""
    if abandoned:
        log.info("recording.discarded", call=call_uuid, reason="the caller hung up before the recording began")
    elif facts.status == "complete":
        log.info("recording.complete", call=call_uuid, path=path, size_bytes=facts.size_bytes,
                 duration=facts.duration, sha256=facts.sha256)
    else:
        log.warning("recording.problem", call=call_uuid, path=path, status=facts.status, error=facts.error)


def finalize_stale(db: Database, settings: Settings, now: datetime | None = None) -> int:
    """Finish recordings whose end was never seen (fsguard restarted mid-call, a node died):
    their call has ended, or they started longer ago than any call may last."""
    now = now or utcnow()
    stale_before = now - timedelta(seconds=settings.esl.max_call_seconds + 600)
    ended_before = now - timedelta(seconds=120)
    with db.begin() as s:
        rows = s.execute(
            select(Recording.call_uuid, CallRecord.ended_at)
            .outerjoin(CallRecord, CallRecord.uuid == Recording.call_uuid)
            .where(Recording.ended_at.is_(None),
                   or_(Recording.started_at < stale_before, CallRecord.ended_at < ended_before))).all()
    for call_uuid, call_end in rows:
        finalize(db, call_uuid, ended_at=call_end or now, note="finished late: its call's end was not seen")
    return len(rows)


# ---------------------------------------------------------------------- reading


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def as_dict(rec: Recording) -> dict[str, Any]:
    """The stable JSON shape of a recording (CLI ``--json`` and the admin API)."""
    def offset(t: datetime | None) -> float | None:
        return None if t is None else round((t - rec.started_at).total_seconds(), 3)

    return {
        "uuid": rec.call_uuid, "path": rec.path, "status": rec.status, "mode": rec.mode, "rule": rec.rule,
        "purpose": rec.purpose, "consent": rec.consent, "stereo": rec.stereo, "started_by": rec.started_by,
        "node": rec.node, "direction": rec.direction, "number": rec.number,
        "started_at": _iso(rec.started_at), "ended_at": _iso(rec.ended_at), "retain_until": _iso(rec.retain_until),
        "legal_hold": rec.legal_hold, "hold_reason": rec.hold_reason, "held_at": _iso(rec.held_at),
        "size_bytes": rec.size_bytes, "duration": rec.duration, "sha256": rec.sha256, "error": rec.error,
        "masks": [{"start": _iso(m.started_at), "end": _iso(m.ended_at), "from_second": offset(m.started_at),
                   "to_second": offset(m.ended_at), "requested_by": m.requested_by} for m in rec.masks],
    }


def _find(s: Session, uuid: str, *, for_update: bool = False) -> Recording:
    """The recording of a call, by its uuid or an unambiguous prefix of at least 8 characters."""
    uuid = uuid.strip().lower()
    q = select(Recording).where(Recording.call_uuid == uuid)
    rec = s.scalars(q.with_for_update() if for_update else q).first()
    if rec is None and 8 <= len(uuid) < 36 and re.fullmatch(r"[0-9a-f-]+", uuid):
        q = select(Recording).where(Recording.call_uuid.startswith(uuid)).limit(2)
        found = list(s.scalars(q.with_for_update() if for_update else q))
        if len(found) > 1:
            raise RecordingError(f"{uuid!r} matches several recordings; give more of the uuid")
        rec = found[0] if found else None
    if rec is None:
        raise NotFound(f"no recording for call {uuid}")
    return rec


def list_recordings(db: Database, *, number: str | None = None, held: bool | None = None,
                    expired: bool = False, status: str | None = None, limit: int = 50,
                    region: str = "US") -> list[dict[str, Any]]:
    """Most recent first. ``number`` is read like any number an operator types (E.164 compared)."""
    q = select(Recording).order_by(Recording.started_at.desc()).limit(limit)
    if number:
        try:
            q = q.where(Recording.number == lookup_number(number, region))
        except numbers.InvalidNumber as exc:
            raise RecordingError(str(exc)) from None
    if held is not None:
        q = q.where(Recording.legal_hold.is_(held))
    if expired:
        q = q.where(Recording.retain_until <= utcnow())
    if status:
        q = q.where(Recording.status == status)
    with db.begin() as s:
        return [as_dict(r) for r in s.scalars(q)]


def show(db: Database, uuid: str) -> dict[str, Any]:
    """A recording, with what its keyword review heard (``review``: null if not reviewed)."""
    from fsguard.rules.review import hits_for_call

    with db.begin() as s:
        rec = _find(s, uuid)
        return {**as_dict(rec), "review": hits_for_call(s, rec.call_uuid)}


# ------------------------------------------------------------------ legal hold


def hold(db: Database, uuid: str, reason: str, *, by: str = "cli") -> dict[str, Any]:
    """Put a recording under legal hold: no purge and no erasure touches it until released."""
    reason = " ".join(reason.split())
    if not reason:
        raise RecordingError("a legal hold needs a reason (the case or request it is kept for)")
    with db.begin() as s:
        rec = _find(s, uuid, for_update=True)
        rec.legal_hold = True
        rec.hold_reason = reason[:512]
        rec.held_at = utcnow()
        data = as_dict(rec)
    log.info("recording.held", call=data["uuid"], reason=reason, by=by)
    return data


def release(db: Database, uuid: str, *, by: str = "cli") -> dict[str, Any]:
    """Lift a legal hold; the recording's retention applies again (an expired one goes at the next purge)."""
    with db.begin() as s:
        rec = _find(s, uuid, for_update=True)
        if not rec.legal_hold:
            raise RecordingError(f"the recording of call {rec.call_uuid} is not under legal hold")
        rec.legal_hold = False
        rec.hold_reason = ""
        rec.held_at = None
        data = as_dict(rec)
    log.info("recording.released", call=data["uuid"], by=by, retain_until=data["retain_until"])
    return data


# ------------------------------------------------------------------------ purge


@dataclass
class PurgeReport:
    """What a purge did: deleted (file and row), kept under legal hold, and could not delete."""

    dry_run: bool
    at: datetime
    deleted: list[dict[str, Any]] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "at": self.at.isoformat(), "deleted": self.deleted, "held": self.held,
                "failed": self.failed}


def purge(db: Database, settings: Settings, *, dry_run: bool = False, now: datetime | None = None) -> PurgeReport:
    """Delete every recording past its retain-until date, except those under legal hold.

    Each recording is purged in its own short transaction with its row locked (PostgreSQL), so a
    hold placed at the same moment wins, several nodes may purge at once, and one file that cannot
    be deleted (it is not a regular file, permissions...) is reported and kept, with its row, for
    the next purge, while the others are purged. A file already gone is reported and its row
    removed. If ``recording.dir`` is not there at all (storage not mounted?) nothing is touched.
    """
    now = now or utcnow()
    report = PurgeReport(dry_run, now)
    maybe_live = now - timedelta(seconds=settings.esl.max_call_seconds)
    expired = and_(Recording.retain_until <= now,
                   or_(Recording.ended_at.is_not(None), Recording.started_at < maybe_live))
    columns = (Recording.id, Recording.call_uuid, Recording.path, Recording.purpose, Recording.retain_until,
               Recording.hold_reason)
    with db.begin() as s:
        for row in s.execute(select(*columns).where(expired, Recording.legal_hold.is_(True))
                             .order_by(Recording.retain_until).limit(PURGE_BATCH)):
            report.held.append({"uuid": row.call_uuid, "retain_until": _iso(row.retain_until),
                                "hold_reason": row.hold_reason})
    root = recording_root(settings.recording)
    last_id = 0
    while True:  # in batches, so that years of backlog do not sit in memory at once
        with db.begin() as s:
            due = s.execute(select(*columns).where(expired, Recording.legal_hold.is_(False), Recording.id > last_id)
                            .order_by(Recording.id).limit(PURGE_BATCH)).all()
        if not due:
            break
        if last_id == 0 and not dry_run and not in_thread(os.path.isdir, str(root)):
            raise RecordingError(f"recording.dir {root} is not a directory (is the storage mounted?): nothing "
                                 "purged; the recordings past retention wait for the next purge")
        for row in due:
            entry = {"uuid": row.call_uuid, "path": row.path, "purpose": row.purpose,
                     "retain_until": _iso(row.retain_until)}
            if dry_run:
                report.deleted.append({**entry, "note": "would be deleted"})
            else:
                _purge_one(db, root, row.id, entry, report)
        last_id = due[-1].id
    if report.deleted or report.failed:
        log.info("recording.purged", deleted=len(report.deleted), held=len(report.held), failed=len(report.failed),
                 dry_run=dry_run)
    return report


def _purge_one(db: Database, root: Path, rid: int, entry: dict[str, Any], report: PurgeReport) -> None:
    with db.begin() as s:
        rec = s.scalars(select(Recording).where(Recording.id == rid).with_for_update()).first()
        if rec is None:
            return  # another node purged it a moment ago
        if rec.legal_hold:
            report.held.append({"uuid": rec.call_uuid, "retain_until": _iso(rec.retain_until),
                                "hold_reason": rec.hold_reason})
            return
        try:
            existed = in_thread(remove_file, rec.path, root)
        except OSError as exc:
            rec.error = f"purge failed at {report.at:%Y-%m-%d %H:%M}Z: {exc.strerror or exc}"
            report.failed.append({**entry, "error": str(exc.strerror or exc)})
            log.error("recording.purge_failed", call=rec.call_uuid, path=rec.path, error=str(exc))
            return
        s.delete(rec)
    note = "file deleted" if existed else "file was already missing; record removed"
    if not existed:
        log.warning("recording.purge_missing", call=entry["uuid"], path=entry["path"])
    report.deleted.append({**entry, "note": note})


# ------------------------------------------------------------ integrity check


def verify(db: Database, uuid: str | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Hash the files again and compare with the SHA-256 taken when each call ended."""
    with db.begin() as s:
        if uuid:
            recs = [_find(s, uuid)]
        else:
            q = select(Recording).where(Recording.sha256.is_not(None)).order_by(Recording.started_at)
            recs = list(s.scalars(q.limit(limit) if limit else q))
        todo = [(r.call_uuid, r.path, r.sha256, r.size_bytes) for r in recs]
    results = []
    for call_uuid, path, expected, size in todo:
        facts = in_thread(inspect_file, path)
        if expected is None:
            problem = "no hash was taken when the call ended"
        elif facts.status != "complete":
            problem = facts.error
        elif facts.sha256 != expected:
            problem = f"SHA-256 differs: stored {expected}, file {facts.sha256} (size {size} -> {facts.size_bytes})"
        else:
            problem = ""
        results.append({"uuid": call_uuid, "path": path, "ok": not problem, "problem": problem})
    return results


# ----------------------------------------------------- live calls: FreeSWITCH


def _ask_freeswitch(settings: Settings, uuid: str, action: str, path: str) -> str:
    try:
        with FreeSWITCHAPI.from_settings(settings.esl) as fs:
            return uuid_record(fs, uuid, action, path)
    except InboundError as exc:
        raise RecordingError(str(exc)) from exc


def _live(s: Session, uuid: str) -> Recording:
    rec = _find(s, uuid)
    if rec.ended_at is not None:
        raise RecordingError(f"the recording of call {rec.call_uuid} is over (status {rec.status})")
    return rec


def _written(db: Database, uuid: str, wait: float) -> None:
    """Wait up to ``wait`` seconds for a recording's row to be there.

    A recording made by policy is written by its node's call writer a few milliseconds after the
    call was decided: a pause asked for at once (a console open on the call as it comes in) may
    come before it. Each look is a transaction of its own, so the writer's commit is seen."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with db.begin() as s:
                _find(s, uuid)
            return
        except NotFound:
            if time.monotonic() >= deadline:
                raise NotFound(f"no recording for call {uuid.strip().lower()}: none was written within "
                               f"{wait:g} s (a recording made by policy is written by the call's node moments "
                               "after the call is decided; if the call has just come in, try again)") from None
        gevent.sleep(WRITTEN_POLL_SECONDS)


def pause(db: Database, settings: Settings, uuid: str, *, by: str = "cli") -> dict[str, Any]:
    """Mask the recording (silence is written, the timeline kept) while card data is spoken.

    The interval is written before FreeSWITCH is asked, so the stored interval always covers the
    masked audio; if FreeSWITCH refuses, the interval is removed again.
    """
    _written(db, uuid, WRITTEN_WAIT_SECONDS)
    with db.begin() as s:
        rec = _live(s, uuid)
        open_masks = [m for m in rec.masks if m.ended_at is None]
        if open_masks:
            raise RecordingError(f"the recording of call {rec.call_uuid} is already paused "
                                 f"(since {open_masks[0].started_at:%H:%M:%S}Z)")
        mask = RecordingMask(recording_id=rec.id, started_at=utcnow(), requested_by=by[:64])
        s.add(mask)
        s.flush()
        mask_id, call_uuid, path = mask.id, rec.call_uuid, rec.path
    try:
        reply = _ask_freeswitch(settings, call_uuid, "mask", path)
    except RecordingError:
        with db.begin() as s:
            s.execute(delete(RecordingMask).where(RecordingMask.id == mask_id))
        raise
    log.info("recording.paused", call=call_uuid, by=by, reply=reply)
    return show(db, call_uuid)


def resume(db: Database, settings: Settings, uuid: str, *, by: str = "cli") -> dict[str, Any]:
    """Unmask: the recording hears the call again. The interval ends once FreeSWITCH confirms."""
    _written(db, uuid, WRITTEN_WAIT_SECONDS)
    with db.begin() as s:
        rec = _live(s, uuid)
        if not any(m.ended_at is None for m in rec.masks):
            raise RecordingError(f"the recording of call {rec.call_uuid} is not paused")
        rid, call_uuid, path = rec.id, rec.call_uuid, rec.path
    reply = _ask_freeswitch(settings, call_uuid, "unmask", path)
    with db.begin() as s:
        s.execute(update(RecordingMask).where(RecordingMask.recording_id == rid, RecordingMask.ended_at.is_(None))
                  .values(ended_at=utcnow()))
    log.info("recording.resumed", call=call_uuid, by=by, reply=reply)
    return show(db, call_uuid)


def _recording_verdict(s: Session, call_uuid: str) -> dict[str, Any] | None:
    verdict = s.scalars(select(StageVerdict).where(StageVerdict.call_uuid == call_uuid,
                                                   StageVerdict.stage == "recording")
                        .order_by(StageVerdict.seq.desc())).first()
    return dict(verdict.details or {}) if verdict else None


def _find_call(s: Session, uuid: str) -> CallRecord:
    uuid = uuid.strip().lower()
    call = s.get(CallRecord, uuid)
    if call is None and 8 <= len(uuid) < 36 and re.fullmatch(r"[0-9a-f-]+", uuid):
        found = list(s.scalars(select(CallRecord).where(CallRecord.uuid.startswith(uuid)).limit(2)))
        if len(found) > 1:
            raise RecordingError(f"{uuid!r} matches several calls; give more of the uuid")
        call = found[0] if found else None
    if call is None:
        raise NotFound(f"no call {uuid}: on-demand recording is for calls fsguard took")
    return call


def start(db: Database, settings: Settings, uuid: str, *, purpose: str | None = None,
          by: str = "cli") -> dict[str, Any]:
    """Start recording a live call whose recording rule is ``on_demand``.

    The consent announcement, if the rule asks for one, was played when the call came in; the
    recording's row is written first and removed again if FreeSWITCH refuses.
    """
    cfg = settings.recording
    root = recording_root(cfg)
    with db.begin() as s:
        call = _find_call(s, uuid)
        if call.ended_at is not None:
            raise RecordingError(f"call {call.uuid} has ended")
        existing = s.scalars(select(Recording).where(Recording.call_uuid == call.uuid)).first()
        if existing is not None:
            state = "is already being recorded" if existing.ended_at is None else f"was recorded ({existing.status})"
            raise RecordingError(f"call {call.uuid} {state}; a call has one recording "
                                 "(use pause/resume to leave a passage out)")
        details = _recording_verdict(s, call.uuid) or {}
        mode = details.get("mode")
        if mode != "on_demand":
            policy = f"its recording rule is {mode!r}" if mode else "the recording stage did not decide on it"
            raise RecordingError(f"call {call.uuid} is not open to on-demand recording: {policy}")
        if details.get("consent_required") and not details.get("consent"):
            raise RecordingError(f"call {call.uuid} cannot be recorded: its rule asks for a consent notice "
                                 "and the notice was not played")
        purpose = purpose or details.get("purpose") or cfg.purpose
        now = utcnow()
        values: dict[str, Any] = dict(
            call_uuid=call.uuid, path=recording_path(root, call.uuid, now), node=settings.node.id,
            direction=call.direction, mode="on_demand", rule=str(details.get("rule", "")),
            number=party_number(call.direction, call.ani, call.dnis, settings.node.default_region),
            purpose=purpose, consent=bool(details.get("consent")), stereo=cfg.stereo,
            started_by=by[:64], status="recording", started_at=now,
            retain_until=retain_until(cfg, purpose, now), legal_hold=False, hold_reason="", error="")
    try:
        open_recording(db, **values)
    except IntegrityError:
        raise RecordingError(f"call {values['call_uuid']} is already being recorded") from None
    try:
        reply = _ask_freeswitch(settings, values["call_uuid"], "start", values["path"])
    except RecordingError as exc:
        with db.begin() as s:
            s.execute(delete(Recording).where(Recording.call_uuid == values["call_uuid"],
                                              Recording.ended_at.is_(None)))
        raise RecordingError(f"{exc}; recording not started") from exc
    log.info("recording.started", call=values["call_uuid"], by=by, purpose=purpose, path=values["path"], reply=reply)
    return show(db, values["call_uuid"])


def stop(db: Database, settings: Settings, uuid: str, *, by: str = "cli") -> dict[str, Any]:
    """Stop an on-demand recording for good; the file is hashed at once.

    Recordings made by policy (``all``, ``sample``) cannot be stopped: what must be recorded is.
    """
    _written(db, uuid, WRITTEN_WAIT_SECONDS)
    with db.begin() as s:
        rec = _live(s, uuid)
        if rec.mode != "on_demand":
            raise RecordingError(f"call {rec.call_uuid} is recorded by policy ({rec.mode}, rule "
                                 f"{rec.rule or 'default'}) and cannot be stopped; use 'fsguard recordings pause' "
                                 "to leave a passage out")
        call_uuid, path = rec.call_uuid, rec.path
    reply = _ask_freeswitch(settings, call_uuid, "stop", path)
    log.info("recording.stopped", call=call_uuid, by=by, reply=reply)
    data = finalize(db, call_uuid, note=f"stopped by {by}")
    return data if data is not None else show(db, call_uuid)


# --------------------------------------------------------------------- erasure


def erase_for_number(session: Session, number_e164: str, calls_of_number: ColumnElement[bool], *,
                     root: Path | None, dry_run: bool) -> tuple[list[str], set[str], list[str]]:
    """Erasure's recording part: delete the files and rows of that number's recordings, except
    those under legal hold. Returns (lines, uuids of calls kept because of a hold, errors)."""
    recs = list(session.scalars(
        select(Recording).where(or_(Recording.number == number_e164,
                                    Recording.call_uuid.in_(select(CallRecord.uuid).where(calls_of_number))))
        .order_by(Recording.started_at)))
    lines: list[str] = []
    held_calls: set[str] = set()
    errors: list[str] = []
    deleted = 0
    for rec in recs:
        if rec.legal_hold:
            held_calls.add(rec.call_uuid)
            lines.append(f"kept recording of call {rec.call_uuid} ({rec.started_at:%Y-%m-%d}): under legal hold "
                         f"since {rec.held_at:%Y-%m-%d} - {rec.hold_reason}" if rec.held_at else
                         f"kept recording of call {rec.call_uuid}: under legal hold - {rec.hold_reason}")
            continue
        if not dry_run:
            try:
                in_thread(remove_file, rec.path, root) if root is not None else in_thread(_unlink_anywhere, rec.path)
            except OSError as exc:
                errors.append(f"could not delete {rec.path} (call {rec.call_uuid}): {exc.strerror or exc}; "
                              "its record is kept so that a new 'fsguard erase' finishes the job")
                continue
            session.delete(rec)
        deleted += 1
    if deleted:
        verb = "would delete" if dry_run else "deleted"
        lines.insert(0, f"{verb} {deleted} recording(s) (audio files and their records, masks included)")
    elif not recs:
        lines.append("no recordings of this number")
    return lines, held_calls, errors


def _unlink_anywhere(path: str) -> bool:
    """Delete a recording file wherever its row says it is (erasure without settings at hand)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise OSError(f"{path} is not a regular file; not touched")
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
