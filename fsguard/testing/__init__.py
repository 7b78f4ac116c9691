"""Test support for fsguard: a FreeSWITCH simulator and helpers for the wire format.

* :mod:`fsguard.testing.simulator` -- :class:`FakeFreeSWITCH`, which dials into fsguard for
  each simulated channel and plays FreeSWITCH's outbound socket application byte for byte;
* :mod:`fsguard.testing.wire` -- FreeSWITCH-style URL encoding, event serialisation and a
  safe frame reader;
* :mod:`fsguard.testing.transcripts` -- a loader for the real captures in esl-transcripts/.
"""

from fsguard.testing.simulator import Caller, FakeFreeSWITCH, SimResult

__all__ = ["Caller", "FakeFreeSWITCH", "SimResult"]
