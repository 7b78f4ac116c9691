"""Keyword review of finished recordings: what the other party said, and what the policy does.

The outbound risk-control practice has two halves: three rejected or short calls a day freeze a
number (fsguard.rules.freeze), and a called person who says "not interested" or "stop calling" is not
called again. This module is the second half, offline and after the call, never on its path:

    the oldest finished recording that may be analysed and has no review yet
    -> claimed (a row in review_results, unique per recording, with this worker's token)
    -> its other party's channel listened to in a child process (fsguard.rules.spotting), masked
       intervals left out
    -> in ONE transaction: the claim turned into the result, the hits written, and the numbers
       frozen where the policy says so (fsguard.rules.freeze.freeze, source "review")

A worker that dies leaves its claim; after ``review.claim_timeout`` another worker (or the same one
restarted) takes it over with a new token, and the dead worker's late result, if any, is refused
(its token is no longer on the row). So a crash or a restart neither skips nor repeats a
recording: results are committed exactly once, with the claim.

Which channel: FreeSWITCH's ``RECORD_STEREO`` writes the recorded channel's *read* stream (what
that channel's own party says) on the left and its *write* stream (what it hears: the other
party) on the right. fsguard records the channel it controls: on an inbound call the caller's, so
the caller is on the left (0) and the agent on the right (1); on an outbound call the agent's leg,
so the agent is on the left and the called person on the right. The customer is channel 0 on
inbound calls and channel 1 on outbound calls; the agent's words are never listened to.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

import structlog
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fsguard.store import audit
from fsguard.rules import freeze, spotting
from fsguard.config import ReviewSettings, Settings, parse_duration
from fsguard.store.db import Database
from fsguard.store.models import utcnow
from fsguard.store.models.recordings import Recording
from fsguard.store.models.review import ReviewHit, ReviewResult

log = structlog.get_logger("fsguard.rules.review")

#: states after which a recording is not reviewed again
FINAL = ("done", "skipped")


class ReviewError(Exception):
    """A request about reviews that cannot be carried out; the message says why."""


def customer_channel(direction: str) -> int:
    """The stereo channel of the party fsguard's recording does not belong to (see the module)."""
    return 1 if direction == "outbound" else 0


# ------------------------------------------------------------------ policy


@dataclass(frozen=True)
class Phrase:
    phrase: str
    threshold: float
    outbound: str
    inbound: str

    def action(self, direction: str) -> str:
        return self.outbound if direction == "outbound" else self.inbound


class Policy:
    """``[review]`` compiled: the phrases, checked against the recogniser's dictionary."""

    def __init__(self, cfg: ReviewSettings, outbound_freeze_for: str) -> None:
        self.cfg = cfg
        self.phrases = [Phrase(p["phrase"], float(p["threshold"]), p["outbound"], p["inbound"]) for p in cfg.phrases]
        for phrase, unknown in spotting.unknown_words([p.phrase for p in self.phrases]).items():
            raise ReviewError(f"review.phrases: {phrase!r}: {', '.join(unknown)} not in the recogniser's "
                              "dictionary (pocketsphinx's cmudict-en-us); write it as words the dictionary knows")
        self.freeze_seconds = parse_duration(cfg.freeze_for or outbound_freeze_for)
        self.claim_seconds = parse_duration(cfg.claim_timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.review, settings.outbound.freeze_for)

    def listened_for(self, direction: str) -> list[Phrase]:
        return [p for p in self.phrases if p.action(direction) != "ignore"]

    def by_phrase(self) -> dict[str, Phrase]:
        return {p.phrase: p for p in self.phrases}


# ------------------------------------------------------------------- queue


def _eligible(cfg: ReviewSettings) -> Any:
    """Recordings that may be reviewed: finished, intact, kept for a purpose that allows analytics."""
    return and_(Recording.status == "complete", Recording.ended_at.is_not(None),
                Recording.purpose.in_(cfg.purposes), Recording.direction.in_(cfg.directions))


def _waiting(cfg: ReviewSettings, now: datetime, claim_seconds: float) -> Any:
    """No review yet, a claim whose worker died, or a failure that may be tried again (after the
    same wait: a recogniser that timed out is not run again at once)."""
    stale = now - timedelta(seconds=claim_seconds)
    return or_(ReviewResult.id.is_(None),
               and_(ReviewResult.state == "claimed", ReviewResult.claimed_at < stale),
               and_(ReviewResult.state == "failed", ReviewResult.attempts < cfg.max_attempts,
                    ReviewResult.finished_at < stale))


def backlog(db: Database, settings: Settings, now: datetime | None = None) -> int:
    """How many recordings wait for review (the metric ``fsguard_review_backlog``)."""
    cfg, now = settings.review, now or utcnow()
    with db.begin() as s:
        return int(s.scalar(select(func.count()).select_from(Recording)
                            .outerjoin(ReviewResult, ReviewResult.recording_id == Recording.id)
                            .where(_eligible(cfg), or_(ReviewResult.id.is_(None), ReviewResult.state.not_in(FINAL))))
                   or 0)


@dataclass
class Claim:
    result_id: int
    token: str
    recording_id: int
    call_uuid: str
    path: str
    direction: str
    number: str | None
    stereo: bool
    duration: float | None
    skip: list[tuple[float, float]]


def claim_next(db: Database, settings: Settings, node: str, now: datetime | None = None,
               claim_seconds: float | None = None) -> Claim | None:
    """Claim the oldest recording waiting for review, or None. Safe with several workers at once:
    a fresh claim is an INSERT on a unique recording id, a take-over a compare-and-set on the token."""
    cfg = settings.review
    claim_seconds = parse_duration(cfg.claim_timeout) if claim_seconds is None else claim_seconds
    for _ in range(20):   # lost races: another worker took that one; try the next
        now_ = now or utcnow()
        with db.begin() as s:
            row = s.execute(select(Recording.id, ReviewResult.id.label("result_id"), ReviewResult.token)
                            .outerjoin(ReviewResult, ReviewResult.recording_id == Recording.id)
                            .where(_eligible(cfg), _waiting(cfg, now_, claim_seconds))
                            .order_by(Recording.id).limit(1)).first()
        if row is None:
            return None
        token = str(uuidlib.uuid4())
        try:
            with db.begin() as s:
                rec = s.get(Recording, row.id)
                if rec is None:
                    continue            # purged or erased a moment ago
                if row.result_id is None:
                    result = ReviewResult(recording_id=rec.id, call_uuid=rec.call_uuid, state="claimed", token=token,
                                          claimed_by=node[:128], claimed_at=now_, attempts=0, note="")
                    s.add(result)
                    s.flush()
                    result_id = result.id
                else:
                    taken = s.execute(update(ReviewResult)
                                      .where(ReviewResult.id == row.result_id, ReviewResult.token == row.token)
                                      .values(token=token, state="claimed", claimed_by=node[:128], claimed_at=now_))
                    if taken.rowcount != 1:
                        continue
                    result_id = row.result_id
                    log.warning("review.claim_taken_over", call=rec.call_uuid, previous_token=row.token)
                skip = _masked(rec, cfg.mask_margin)
                return Claim(result_id, token, rec.id, rec.call_uuid, rec.path, rec.direction, rec.number, rec.stereo,
                             rec.duration, skip)
        except IntegrityError:
            continue
    return None


def _masked(rec: Recording, margin: float) -> list[tuple[float, float]]:
    """Masked intervals as seconds into the file, widened by ``margin`` on each side; one still
    open (the call ended while paused) runs to the end of the file."""
    end_of_file = rec.duration if rec.duration is not None else float("inf")
    out = []
    for m in rec.masks:
        start = (m.started_at - rec.started_at).total_seconds() - margin
        stop = ((m.ended_at - rec.started_at).total_seconds() + margin) if m.ended_at else end_of_file
        out.append((max(0.0, start), stop if stop != float("inf") else 1e9))
    return out


# ------------------------------------------------------------------ review


@dataclass
class Outcome:
    call_uuid: str
    state: str
    hits: list[dict[str, Any]]
    seconds: float = 0.0
    note: str = ""


Spot = Callable[[dict[str, Any], float], dict[str, Any]]


def review_one(db: Database, settings: Settings, policy: Policy, claim: Claim, *,
               spot: Spot = spotting.spot_in_subprocess, node: str = "") -> Outcome:
    """Listen to a claimed recording and commit what was heard, with the claim, in one transaction."""
    phrases = policy.listened_for(claim.direction)
    channel = customer_channel(claim.direction)
    if not claim.stereo:
        return _finish(db, settings, policy, claim, "skipped", [], 0.0, None,
                       "mono recording: the parties cannot be told apart", node)
    if not phrases:
        return _finish(db, settings, policy, claim, "skipped", [], 0.0, channel,
                       f"no phrase is listened for on {claim.direction} calls", node)
    request = {"path": claim.path, "channel": channel, "skip": claim.skip,
               "phrases": [{"phrase": p.phrase, "threshold": p.threshold} for p in phrases],
               "phone_loop_penalty": settings.review.phone_loop_penalty}
    timeout = 60.0 + settings.review.timeout_factor * (claim.duration or 3600.0)
    try:
        answer = spot(request, timeout)
    except spotting.SpottingError as exc:
        return _finish(db, settings, policy, claim, "failed", [], 0.0, channel, str(exc), node)
    return _finish(db, settings, policy, claim, "done", answer["hits"], float(answer.get("seconds", 0.0)), channel,
                   "", node)


def _finish(db: Database, settings: Settings, policy: Policy, claim: Claim, state: str, hits: list[dict[str, Any]],
            seconds: float, channel: int | None, note: str, node: str) -> Outcome:
    now = utcnow()
    by_phrase = policy.by_phrase()
    written: list[dict[str, Any]] = []
    with db.begin() as s:
        values: dict[str, Any] = dict(state=state, finished_at=now, seconds=seconds, channel=channel, note=note[:2000])
        if state == "failed":
            values["attempts"] = ReviewResult.attempts + 1
        done = s.execute(update(ReviewResult).where(ReviewResult.id == claim.result_id,
                                                    ReviewResult.token == claim.token).values(**values))
        if done.rowcount != 1:
            # the recording was purged or erased meanwhile, or our claim was taken over: the
            # other worker's result is the one that counts; nothing of ours is kept
            log.warning("review.result_dropped", call=claim.call_uuid, reason="claim no longer ours")
            return Outcome(claim.call_uuid, "dropped", [], seconds, "claim no longer held")
        frozen: freeze.Freeze | None = None
        for h in hits:
            phrase = by_phrase.get(h["phrase"])
            action = phrase.action(claim.direction) if phrase else "flag"
            if action == "ignore":
                continue
            freeze_id = None
            if action == "freeze":
                if claim.number is None:
                    action = "flag"     # no number to freeze: someone should look
                else:
                    frozen = frozen or _freeze(s, claim, h, policy, node, now)
                    freeze_id = frozen.id
            row = ReviewHit(result_id=claim.result_id, recording_id=claim.recording_id, call_uuid=claim.call_uuid,
                            direction=claim.direction, phrase=h["phrase"], second=h["second"],
                            end_second=h["end_second"], score=h["score"], action=action, freeze_id=freeze_id,
                            created_at=now)
            s.add(row)
            s.flush()
            written.append(hit_as_dict(row))
    if state == "failed":
        log.error("review.failed", call=claim.call_uuid, error=note)
    else:
        log.info("review.done", call=claim.call_uuid, state=state, seconds=seconds,
                 hits=[f"{h['phrase']}@{h['second']}s:{h['action']}" for h in written], note=note or None)
    return Outcome(claim.call_uuid, state, written, seconds, note)


def _freeze(s: Session, claim: Claim, hit: dict[str, Any], policy: Policy, node: str, now: datetime) -> freeze.Freeze:
    """Freeze the number (fsguard.rules.freeze's freeze, source ``review``), unless a freeze already in
    force lasts at least as long: the longer decision stands."""
    assert claim.number is not None
    until = now + timedelta(seconds=policy.freeze_seconds)
    current = freeze.active_freeze(s, claim.number, now)
    if current is not None and current.until >= until:
        return current
    reason = (f"said {hit['phrase']!r} at {hit['second']:.1f}s of the recording of call {claim.call_uuid} "
              f"(score {hit['score']:.2f}, {claim.path})")
    frozen, _ = freeze.freeze(s, claim.number, reason=reason, seconds=policy.freeze_seconds, source="review",
                                by=f"review@{node}"[:128], now=now)
    log.info("review.froze", call=claim.call_uuid, number=claim.number, until=frozen.until.isoformat(),
             phrase=hit["phrase"])
    return frozen


def run_pending(db: Database, settings: Settings, *, node: str, limit: int | None = None,
                spot: Spot = spotting.spot_in_subprocess, metrics: Any = None,
                should_stop: Callable[[], bool] = lambda: False) -> list[Outcome]:
    """Review recordings in order until none waits (or ``limit``); what ``fsguard review run`` and
    the worker in ``fsguard serve`` do."""
    policy = Policy.from_settings(settings)
    outcomes: list[Outcome] = []
    while (limit is None or len(outcomes) < limit) and not should_stop():
        claim = claim_next(db, settings, node, claim_seconds=policy.claim_seconds)
        if claim is None:
            break
        outcome = review_one(db, settings, policy, claim, spot=spot, node=node)
        outcomes.append(outcome)
        if metrics is not None:
            metrics.reviews.labels(state=outcome.state, direction=claim.direction).inc()
            metrics.review_seconds.inc(outcome.seconds)
            for h in outcome.hits:
                metrics.review_hits.labels(phrase=h["phrase"], action=h["action"]).inc()
    if metrics is not None:
        metrics.review_backlog.set(backlog(db, settings))
    return outcomes


# ---------------------------------------------------------------- operators


def hit_as_dict(h: ReviewHit) -> dict[str, Any]:
    return {"id": h.id, "call_uuid": h.call_uuid, "direction": h.direction, "phrase": h.phrase,
            "second": h.second, "end_second": h.end_second, "score": h.score, "action": h.action,
            "freeze_id": h.freeze_id, "created_at": h.created_at.isoformat() if h.created_at else None,
            "reviewed_at": h.reviewed_at.isoformat() if h.reviewed_at else None, "reviewed_by": h.reviewed_by,
            "review_reason": h.review_reason}


def hits_for_call(s: Session, call_uuid: str) -> dict[str, Any] | None:
    """The review of one call (state, hits), or None if it was not reviewed."""
    result = s.scalars(select(ReviewResult).where(ReviewResult.call_uuid == call_uuid)).first()
    if result is None:
        return None
    hits = s.scalars(select(ReviewHit).where(ReviewHit.result_id == result.id).order_by(ReviewHit.second))
    return {"state": result.state, "channel": result.channel, "seconds": result.seconds, "note": result.note,
            "finished_at": result.finished_at.isoformat() if result.finished_at else None,
            "hits": [hit_as_dict(h) for h in hits]}


def call_review(db: Database, call_uuid: str) -> dict[str, Any] | None:
    with db.begin() as s:
        return hits_for_call(s, call_uuid)


def open_hits(db: Database, *, include_reviewed: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """Hits nobody has looked at yet (``review list``), oldest first."""
    with db.begin() as s:
        q = select(ReviewHit)
        if not include_reviewed:
            q = q.where(ReviewHit.reviewed_at.is_(None))
        return [hit_as_dict(h) for h in s.scalars(q.order_by(ReviewHit.id).limit(limit))]


def mark(db: Database, hit_id: int, *, by: str, reason: str, via: audit.Via = "cli") -> dict[str, Any]:
    """An operator looked at a hit: who, when and why are kept on it, and in the audit trail."""
    if not reason.strip():
        raise ReviewError("--reason must say what was found")
    with db.begin() as s:
        hit = s.get(ReviewHit, hit_id, with_for_update=True)
        if hit is None:
            raise ReviewError(f"no review hit {hit_id}")
        if hit.reviewed_at is not None:
            raise ReviewError(f"hit {hit_id} was marked reviewed by {hit.reviewed_by} at "
                              f"{hit.reviewed_at:%Y-%m-%d %H:%M}Z: {hit.review_reason}")
        hit.reviewed_at, hit.reviewed_by, hit.review_reason = utcnow(), by[:128], reason.strip()
        s.flush()
        data = hit_as_dict(hit)
        audit.record(s, actor=by, action="review.mark", subject=data["call_uuid"], reason=reason.strip(),
                     via=via, details={"hit": hit_id, "phrase": data["phrase"], "second": data["second"]})
    log.info("review.marked", hit=hit_id, call=data["call_uuid"], by=by, reason=reason.strip())
    return data

