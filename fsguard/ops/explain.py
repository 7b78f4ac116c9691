"""A stored call in words: why it was decided so, every stage's verdict, what review heard.

``fsguard calls`` and ``calls show``, the admin API's ``/api/calls/<uuid>`` (the explanation), the
lab and ``recordings show`` all say it the same way, from :func:`fsguard.store.records.call_as_dict`.
"""

from __future__ import annotations

from typing import Any


def why(call: dict[str, Any]) -> str:
    """The short answer to "why was this call decided so": the code of the verdict that decided
    it (the last one that did more than let the call through), with its stage."""
    deciding = [v for v in call["verdicts"] if v["outcome"] != "continue"]
    if not deciding:
        return ""
    verdict = next((v for v in deciding if v["outcome"] in ("reject", "error", "abandoned")), deciding[-1])
    label = verdict["code"] or verdict["outcome"]
    return label if label.startswith(verdict["stage"]) else f"{verdict['stage']}: {label}"


def explain(call: dict[str, Any]) -> str:
    """A call's story in words an operator can forward."""
    inputs = call.get("inputs") or {}
    caller = call["ani"] or (f"{call['ani_raw']!r} (no usable number)" if call["ani_raw"] else "anonymous")
    lines = [f"Call {call['uuid']}",
             f"  {call['direction']} call from {caller} to {call['dnis']}, started {call['started_at']}"
             f" on node {call['node']}"]
    if inputs.get("privacy"):
        lines.append("  the caller withheld their number (privacy); fsguard screened the network number")
    if inputs.get("presented") and inputs.get("network") and inputs["presented"] != inputs["network"]:
        lines.append(f"  caller id shown: {inputs['presented']}; network number: {inputs['network']}")
    lines.append("")
    for i, v in enumerate(call["verdicts"], 1):
        shadow = "" if v["enforced"] else " [shadow mode: not enforced]"
        code = f" {v['code']}" if v.get("code") else ""
        lines.append(f"  {i}. {v['stage']}: {v['outcome']}{code}{shadow} ({v['elapsed_ms']:.1f} ms)")
        if v["reason"]:
            lines.append(f"     {v['reason']}")
        lines += _explain_details(v.get("details") or {}, "     ")
    lines.append("")
    decided = f" after {call['decision_ms']:.1f} ms" if call.get("decision_ms") is not None else ""
    lines.append(f"  Outcome: {call['outcome'] or 'unknown'}{decided}; FreeSWITCH was told: {call['action'] or 'nothing'}")
    if call.get("ended_at"):
        lines.append(f"  Ended {call['ended_at']}: {call['hangup_cause']}, billed {call['billsec']} s")
    else:
        lines.append("  The call has not ended (or its end was not seen).")
    return "\n".join(lines)


def _explain_details(details: dict[str, Any], indent: str) -> list[str]:
    """A verdict's inputs one per line, nested ones indented, empty ones left out."""
    empty = (None, "", [], {})
    lines: list[str] = []
    for key, value in details.items():
        if value in empty:
            continue
        if isinstance(value, dict):
            lines.append(f"{indent}- {key}:")
            lines += _explain_details(value, indent + "  ")
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            lines.append(f"{indent}- {key}:")
            lines += [f"{indent}  * " + ", ".join(f"{k} {v}" for k, v in item.items() if v not in empty)
                      for item in value]
        elif isinstance(value, list):
            lines.append(f"{indent}- {key}: {', '.join(str(item) for item in value)}")
        else:
            lines.append(f"{indent}- {key}: {value}")
    return lines


def hits_text(data: dict[str, Any] | None) -> list[str]:
    """What ``calls show`` and ``recordings show`` say about a call's review."""
    if data is None:
        return []
    side = {0: "left channel", 1: "right channel"}.get(data["channel"], "no channel")
    lines = [f"  review:    {data['state']} ({side}, {data['seconds'] or 0:.1f}s listened)"
             + (f" - {data['note']}" if data["note"] else "")]
    for h in data["hits"]:
        seen = f"; reviewed by {h['reviewed_by']}: {h['review_reason']}" if h["reviewed_at"] else ""
        froze = f" (freeze #{h['freeze_id']})" if h["freeze_id"] else ""
        lines.append(f"    heard {h['phrase']!r} at {h['second']:.1f}s, score {h['score']:.2f}: "
                     f"{h['action']}{froze} [hit {h['id']}]{seen}")
    return lines
