"""structlog set-up: JSON lines for journald and log shippers, pretty output on a terminal.

Stdlib loggers (greenswitch, alembic, SQLAlchemy) go through the same processors, so every line
fsguard prints has one format. The call's uuid, ANI and DNIS come from contextvars bound in the
call's greenlet (each greenlet starts with empty contextvars under gevent).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

from fsguard.config import LoggingSettings

#: a telephone number in any form a switch writes: 6 digits or more, with an optional +, not part
#: of a longer word (a uuid's groups, a hex id) - ``+12125550147``, ``bridge .../carrier/2125550147``
_NUMBER = re.compile(r"(?<![\w.-])\+?\d{6,}(?![\w.-])")


def _mask_text(text: str) -> str:
    return _NUMBER.sub(lambda m: re.sub(r"\d(?=\d{2})", "*", m.group()), text)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value) if _NUMBER.search(value) else value
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(v) for v in value]
    return value


#: fields fsguard itself fills with no number in them (skipped: the canonical line is logged per call)
_NO_NUMBERS = frozenset({"event", "level", "logger", "timestamp", "uuid", "direction", "outcome", "hangup_cause"})


def mask_numbers(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: every telephone number in a line, all but its last two digits masked
    (``+1*********47``). Numbers are personal data: a number erased on request (``fsguard erase``)
    must not stay in the logs, which fsguard cannot rewrite. ``logging.numbers = "clear"`` turns it off."""
    search = _NUMBER.search
    for key, value in event_dict.items():
        if key in _NO_NUMBERS:
            continue
        if isinstance(value, str):
            if search(value):
                event_dict[key] = _mask_text(value)
        elif isinstance(value, (dict, list, tuple)):
            event_dict[key] = _mask(value)
    return event_dict


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
    masking = [mask_numbers] if settings.numbers == "masked" else []
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, *masking, renderer], foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("sqlalchemy", "alembic", "greenswitch"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
