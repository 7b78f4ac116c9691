"""What the stages and the pipeline need from the application that runs them, and nothing more.

The service's App (fsguard/service/app.py) and replay's stand-in (fsguard/ops/replay.py) both
provide it; the call layer never imports either.
"""

from __future__ import annotations

from typing import Any, Protocol

from fsguard.config import Settings
from fsguard.store.db import Database


class AppPort(Protocol):
    """The application as a stage sees it: settings, database, metrics, and the group-commit writer."""

    settings: Settings
    db: Database
    #: fsguard.service.metrics.Metrics (counters a stage bumps: db_errors, auto_blocks...)
    metrics: Any
    #: fsguard.store.writer.Writer (rows a stage queues after the call); absent in a replay
    writer: Any
