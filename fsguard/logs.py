"""structlog set-up: JSON lines for journald and log shippers, pretty output on a terminal.

Stdlib loggers (greenswitch, alembic, SQLAlchemy) go through the same processors, so every line
fsguard prints has one format. The call's uuid, ANI and DNIS come from contextvars bound in the
call's greenlet (each greenlet starts with empty contextvars under gevent).
"""

from __future__ import annotations

import logging
import sys

import structlog

from fsguard.config import LoggingSettings


def configure(settings: LoggingSettings | None = None, stream=None) -> None:  # type: ignore[no-untyped-def]
    settings = settings or LoggingSettings()
    stream = stream or sys.stderr
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    level = getattr(logging, settings.level.upper())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (structlog.dev.ConsoleRenderer() if fmt == "console"
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info if fmt == "json" else structlog.processors.StackInfoRenderer(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer], foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("sqlalchemy", "alembic", "greenswitch"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
