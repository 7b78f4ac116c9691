"""The console's "at a glance" page: what the calls did over the last hours, as SVG drawn here on
the server (no chart library in the browser, nothing to build).

Counts come from the database with one grouped query per figure (per minute and outcome), so the
page costs the same whether the hours held a hundred calls or a million.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import Integer, cast, func, select

from fsguard.store.models import CallRecord, StageVerdict
from fsguard.store.models.lists import ListEntry

#: the series drawn, in order, with their colours (the CSS legend uses the same classes)
SERIES = (("routed", "#2e7d32"), ("challenged", "#f9a825"), ("verified", "#1565c0"),
          ("blocked", "#c62828"), ("failed_open", "#6a1b9a"))


def _minute(column: Any, dialect: str) -> Any:
    """Minutes since the epoch of a timestamp column, on SQLite and PostgreSQL."""
    if dialect == "sqlite":
        return cast(func.strftime("%s", column), Integer) // 60
    return cast(func.floor(func.extract("epoch", column) / 60), Integer)


def glance_facts(app: Any, hours: int, now: datetime | None = None) -> dict[str, Any]:
    """Calls per minute by outcome, the challenge pass rate and the automatic blocks over ``hours``."""
    now = now or datetime.now(timezone.utc)
    minutes = hours * 60
    first = int(now.timestamp()) // 60 - minutes + 1          # the last bucket is the minute now
    since = datetime.fromtimestamp(first * 60, timezone.utc)
    series: dict[str, list[int]] = {name: [0] * minutes for name, _ in SERIES}
    with app.db.begin() as session:
        dialect = session.get_bind().dialect.name
        minute = _minute(CallRecord.started_at, dialect)
        rows = session.execute(select(minute.label("m"), CallRecord.outcome, CallRecord.verified,
                                      func.count().label("n"))
                               .where(CallRecord.started_at >= since)
                               .group_by(minute, CallRecord.outcome, CallRecord.verified)).all()
        vminute = _minute(CallRecord.started_at, dialect)
        challenged = session.execute(
            select(vminute.label("m"), func.count(func.distinct(StageVerdict.call_uuid)))
            .join(CallRecord, CallRecord.uuid == StageVerdict.call_uuid)
            .where(CallRecord.started_at >= since, StageVerdict.outcome == "challenge")
            .group_by(vminute)).all()
        auto_blocks = session.scalar(select(func.count()).select_from(ListEntry)
                                     .where(ListEntry.source == "auto", ListEntry.created_at >= since)) or 0
    totals = {name: 0 for name, _ in SERIES}
    for m, outcome, verified, n in rows:
        i = int(m) - first
        if not 0 <= i < minutes:
            continue
        name = {"routed": "routed", "rejected": "blocked", "failed_open": "failed_open"}.get(outcome)
        if name:
            series[name][i] += n
            totals[name] += n
        if verified:
            series["verified"][i] += n
            totals["verified"] += n
    for m, n in challenged:
        i = int(m) - first
        if 0 <= i < minutes:
            series["challenged"][i] += n
            totals["challenged"] += n
    passed = totals["verified"]
    rate = (100.0 * passed / totals["challenged"]) if totals["challenged"] else None
    return {"series": series, "totals": totals, "pass_rate": rate, "auto_blocks": auto_blocks,
            "since": since, "now": now, "minutes": minutes, "total_calls": sum(n for *_, n in rows)}


def bucket_for(hours: int) -> int:
    """Minutes per point: every minute over the last hour, coarser over longer spans (a line of
    more than a few hundred points is no longer read at a glance)."""
    return 1 if hours <= 1 else (5 if hours <= 6 else 15)


def line_chart(series: dict[str, list[int]], since: datetime, *, width: int = 900, height: int = 220,
               bucket: int = 5) -> Markup:
    """Calls per ``bucket`` minutes, one line per outcome, with an hour grid and a y scale."""
    names = [name for name, _ in SERIES]
    colours = dict(SERIES)
    summed = {n: [sum(series[n][i:i + bucket]) for i in range(0, len(series[n]), bucket)] for n in names}
    points = len(next(iter(summed.values())))
    top = max([1] + [v for vals in summed.values() for v in vals])
    left, bottom, right, upper = 44, 24, 10, 10
    plot_w, plot_h = width - left - right, height - bottom - upper

    def x(i: int) -> float:
        return left + (plot_w * i / max(1, points - 1))

    def y(v: float) -> float:
        return upper + plot_h - plot_h * v / top

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="calls per {bucket} minutes by outcome" xmlns="http://www.w3.org/2000/svg">']
    for frac in (0, 0.5, 1):
        v = top * frac
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{v:.0f}</text>')
    per_hour = 60 // bucket
    for i in range(0, points, per_hour):
        label = (since + timedelta(minutes=i * bucket)).strftime("%H:%M")
        parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{upper}" y2="{upper + plot_h}" class="grid"/>'
                     f'<text x="{x(i):.1f}" y="{height - 6}" class="axis" text-anchor="middle">{escape(label)}</text>')
    for name in names:
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(summed[name]))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colours[name]}" stroke-width="2" '
                     f'class="series-{name}"><title>{escape(name)}</title></polyline>')
    parts.append("</svg>")
    return Markup("".join(parts))


def gauge(value: float | None, label: str, *, width: int = 220, height: int = 40) -> Markup:
    """A horizontal bar for a percentage (the challenge pass rate); "no challenges" when None."""
    if value is None:
        return Markup(f'<svg class="gauge" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
                      f'<rect x="0" y="8" width="{width}" height="18" class="gauge-bg"/>'
                      f'<text x="6" y="22" class="axis">{escape(label)}: no challenges</text></svg>')
    filled = width * max(0.0, min(100.0, value)) / 100
    return Markup(f'<svg class="gauge" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
                  f'<rect x="0" y="8" width="{width}" height="18" class="gauge-bg"/>'
                  f'<rect x="0" y="8" width="{filled:.1f}" height="18" class="gauge-fill"/>'
                  f'<text x="6" y="22" class="gauge-text">{escape(label)}: {value:.0f}%</text></svg>')
