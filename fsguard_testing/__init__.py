"""The test FreeSWITCH and what tests need around it, apart from fsguard (whose lab and simulate use it).

* :mod:`fsguard_testing.fakeswitch` -- the FreeSWITCH simulator: :class:`FakeFreeSWITCH` dials into
  fsguard for each simulated channel and plays FreeSWITCH's outbound socket application byte for
  byte; its modules are what it plays (mod_event_socket, the socket application, the channel,
  the applications, the variables, the caller);
* :mod:`fsguard_testing.inbound` -- a fake inbound Event Socket (port 8021) for fsguard's client;
* :mod:`fsguard_testing.wire` -- FreeSWITCH-style URL encoding, event serialisation and a
  safe frame reader;
* :mod:`fsguard_testing.transcripts` -- a loader for the real captures in tests/captures/;
* :mod:`fsguard_testing.capture` -- the recording proxy and the scenarios that made
  tests/captures/fs-1.10.12/ from a real FreeSWITCH (``make capture``);
* :mod:`fsguard_testing.freeswitch` -- a real FreeSWITCH on conf/freeswitch for the tests;
* :mod:`fsguard_testing.waiting` -- waiting for fsguard to be done with its calls.
"""

from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH, SimResult

__all__ = ["Caller", "FakeFreeSWITCH", "SimResult"]
