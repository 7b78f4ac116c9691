"""Whether this node is ready for calls: the checks behind ``/readyz`` and the console's tile.

One list of checks, so that what the console shows a supervisor is what the load balancer and
systemd's probes are told: the database answers and accepts writes, calls are decided on a
current policy, and the Event Socket listener takes calls.
"""

from __future__ import annotations

from typing import Any

import gevent

from fsguard.rules.snapshot import STALE_SECONDS, PolicySnapshot

__all__ = ["READY_TIMEOUT", "checks", "policy_check"]

#: each check that asks the database gets this long to answer
READY_TIMEOUT = 2.0


def policy_check(policy: PolicySnapshot) -> str:
    """Whether calls are decided on a current policy (the snapshot refreshed within STALE_SECONDS)."""
    if not policy.loaded and not policy.refresh():   # a process that serves no calls loads it here
        return "cannot be loaded from the database"
    age = policy.age() or 0.0
    return "ok" if age <= STALE_SECONDS else f"stale: last known current {age:.0f}s ago"


def checks(app: Any, server: Any) -> dict[str, str]:
    """Each check's word: ``ok`` or what is wrong, in a few words an operator can act on."""
    result: dict[str, str] = {}
    try:
        with gevent.Timeout(READY_TIMEOUT):
            result["database"] = "ok" if app.db.ping() else "unreachable"
    except gevent.Timeout:
        result["database"] = f"no answer within {READY_TIMEOUT:g}s"
    try:
        with gevent.Timeout(READY_TIMEOUT):
            result["policy"] = policy_check(app.policy)
    except gevent.Timeout:
        result["policy"] = f"not loaded: no answer within {READY_TIMEOUT:g}s"
    if server is None:
        result["esl"] = "no listener in this process"
    elif server.stopping:
        result["esl"] = "draining: not taking new calls"
    elif not server.server.started:
        result["esl"] = "not listening"
    else:
        result["esl"] = "ok"
    return result
