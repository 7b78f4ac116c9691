"""The baseline: the smallest useful greenswitch outbound application, run like fsguard is run.

It does what every greenswitch call-control app does before any logic of its own -- ``connect``,
``myevents``, ``linger`` -- then sends the call to the queue (``transfer default XML queues``) and
returns, which makes greenswitch send ``exit`` and close. No database, no decision, no logging
per call: whatever fsguard spends above this is the price of screening and writing calls down.

    python bench/greenswitch_app.py 127.0.0.1 8090
"""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import sys  # noqa: E402

from greenswitch.esl import OutboundESLServer  # noqa: E402


class QueueApp:
    def __init__(self, session) -> None:  # type: ignore[no-untyped-def]
        self.session = session

    def run(self) -> None:
        session = self.session
        session.connect()  # OutboundESLServer already sent it; this returns the channel data
        session.myevents()
        session.linger()
        session.call_command("transfer", "default XML queues")


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    logging.basicConfig(level=logging.ERROR)
    OutboundESLServer(bind_address=host, bind_port=port, application=QueueApp, max_connections=100_000).listen()


if __name__ == "__main__":
    main()
