"""All of fsguard's tables. Each area has its own module; importing this package registers them all
with ``Base.metadata``, which is what alembic and the tests compare the migrations against."""

from fsguard.store.models.base import Base, UTCDateTime, utcnow
from fsguard.store.models.calls import CallRecord, StageVerdict
from fsguard.store.models.recordings import Recording, RecordingMask  # noqa: F401
from fsguard.store.models.lists import CallCounter, ListEntry  # noqa: F401
from fsguard.store.models.challenges import Challenge  # noqa: F401
from fsguard.store.models.outbound import OutboundAttempt, OutboundFreeze, OutboundNumber  # noqa: F401
from fsguard.store.models.customers import Customer, CustomerNumber  # noqa: F401
from fsguard.store.models.console import AuditEntry, Operator, OperatorSession  # noqa: F401
from fsguard.store.models.review import ReviewHit, ReviewResult  # noqa: F401
from fsguard.store.models.policy import PolicyChange, PolicyVersion  # noqa: F401

__all__ = ["Base", "UTCDateTime", "utcnow", "CallRecord", "StageVerdict"]
