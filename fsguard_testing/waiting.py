"""Waiting for fsguard to be done with its calls, as the end-to-end tests (and the lab) need it."""

from __future__ import annotations

from typing import Any, Callable

import gevent


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition not reached") -> None:
    """Poll ``predicate`` (cooperatively) until it is true; AssertionError after ``timeout`` seconds."""
    with gevent.Timeout(timeout, AssertionError(what)):
        while not predicate():
            gevent.sleep(0.01)


def settle(guard: Any, timeout: float = 5.0) -> None:
    """Wait until fsguard has let go of every call: decided, followed to its end, socket closed,
    and what the calls left behind committed by the writer. ``guard`` has ``app`` and ``server``."""
    app = guard.app
    wait_for(lambda: not app.deciding and not app.held and guard.server.active == 0
             and guard.server.connecting == 0, timeout, "fsguard did not let go of its calls")
    if not app.writer.wait_idle(timeout):
        raise AssertionError("the writer did not commit the calls' records")
