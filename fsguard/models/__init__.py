"""All of fsguard's tables. Each area has its own module; importing this package registers them all
with ``Base.metadata``, which is what alembic and the tests compare the migrations against."""

from fsguard.models.base import Base, UTCDateTime, utcnow
from fsguard.models.calls import CallRecord, StageVerdict

__all__ = ["Base", "UTCDateTime", "utcnow", "CallRecord", "StageVerdict"]
