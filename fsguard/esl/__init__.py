"""The Event Socket: what fsguard says to FreeSWITCH, on a call's socket and on the inbound one.

* :mod:`fsguard.esl.protocol` -- the protocol without a socket: bytes in, frames, replies and
  events out as values; commands as values that know their bytes. Every hardening rule lives
  here (frame limits, line-split parsing, the linger notice matched by FreeSWITCH's own bytes).
* :mod:`fsguard.esl.channel` -- ``OutboundChannel``, one call's channel without the socket: what
  FreeSWITCH said sorted into answered, hung up, digits, completions; what to subscribe to.
* :mod:`fsguard.esl.session` -- ``OutboundSession``, that channel with its outbound socket
  (FreeSWITCH's ``socket`` application connects to fsguard): the call's greenlet writes commands
  and reads until what it waits for has come (a reply, a completion, the end of the call).
* :mod:`fsguard.esl.client` -- ``FreeSWITCHAPI``, the driver of the inbound socket (fsguard
  connects to FreeSWITCH): ``api`` commands about live calls, and events for whoever subscribes.

The names are imported from their modules: importing the protocol does not bring in a driver.
"""
