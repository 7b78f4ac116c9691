"""The simulator's channel ends on the fake inbound Event Socket, for fsguard's end watcher
(fsguard/service/ends.py).

:class:`InboundEvents` is a :class:`~fsguard_testing.inbound.FakeInboundESL` (auth, ``event``,
``filter``, ``api``, ``exit`` as mod_event_socket does them) that a simulator feeds: attach it with
``InboundEvents(sim)`` and every channel that ends fires its CHANNEL_HANGUP_COMPLETE there too,
whether or not its outbound socket is still open (the hook is ``FakeFreeSWITCH.inbound_events``).
``api uuid_exists <uuid>`` answers ``true`` until the channel ended, then ``false``.
``stop_serving()`` drops every connection, as a FreeSWITCH whose inbound socket went away.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fsguard_testing.inbound import FakeInboundESL


class InboundEvents(FakeInboundESL):
    def __init__(self, sim: Any = None, password: str = "ClueCon") -> None:
        super().__init__(password, api_handler=self._uuid_exists)
        #: the uuids of the channels that ended
        self.ended: set[str] = set()
        if sim is not None:
            sim.inbound_events = self

    def stop(self) -> None:
        self.stop_serving()
        super().stop()

    def stop_serving(self) -> None:
        """Drop every connection (FreeSWITCH restarted, the network went): the watcher must notice."""
        for listener in list(self.listeners):
            try:
                listener.sock.close()
            except OSError:
                pass
        self.listeners.clear()

    def channel_ended(self, channel: Any) -> None:
        """The simulator's hook: ``channel`` (a simulated channel) fired CHANNEL_HANGUP_COMPLETE."""
        self.ended.add(channel.uuid)
        self.publish(channel.build_event("CHANNEL_HANGUP_COMPLETE", pre=[("Hangup-Cause", channel.cause)]))

    def publish(self, headers: Iterable[tuple[str, Any]]) -> int:
        """Send one event (its headers in order) to the connections whose subscription and filters pass it."""
        return self.emit(dict(headers))

    def _uuid_exists(self, command: str) -> str | None:
        name, _, uuid = command.partition(" ")
        if name != "uuid_exists":
            return None
        return "false" if uuid.strip() in self.ended else "true"
