"""Test support for fsguard: a FreeSWITCH simulator and helpers for the wire format.

* :mod:`fsguard_testing.simulator` -- :class:`FakeFreeSWITCH`, which dials into fsguard for
  each simulated channel and plays FreeSWITCH's outbound socket application byte for byte;
* :mod:`fsguard_testing.wire` -- FreeSWITCH-style URL encoding, event serialisation and a
  safe frame reader;
* :mod:`fsguard_testing.transcripts` -- a loader for the real captures in tests/captures/;
* :mod:`fsguard_testing.capture` -- the recording proxy and the scenarios that made
  tests/captures/fs-1.10.12/ from a real FreeSWITCH (``make capture``);
* :mod:`fsguard_testing.freeswitch` -- a real FreeSWITCH on conf/freeswitch for the tests.
"""

from fsguard_testing.simulator import Caller, FakeFreeSWITCH, SimResult

__all__ = ["Caller", "FakeFreeSWITCH", "SimResult"]
