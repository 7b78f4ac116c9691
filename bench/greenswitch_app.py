"""The baseline: the smallest useful greenswitch outbound application, run like fsguard is run.

It does what every greenswitch call-control app does before any logic of its own -- ``connect``,
``myevents``, ``linger`` -- then sends the call to the queue (``transfer default XML queues``) and
returns, which makes greenswitch send ``exit`` and close. No database, no decision, no logging
per call: whatever fsguard spends above this is the price of screening and writing calls down.

    python bench/greenswitch_app.py 127.0.0.1 8090

With ``FSGUARD_BENCH_STATS=PORT`` it also answers one JSON line on 127.0.0.1:PORT: the frames it
read from FreeSWITCH by Content-Type (the real-FreeSWITCH bench's events per call).
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from gevent.server import StreamServer  # noqa: E402
from greenswitch.esl import ESLProtocol, OutboundESLServer  # noqa: E402

FRAMES: dict = {}


class QueueApp:
    def __init__(self, session) -> None:  # type: ignore[no-untyped-def]
        self.session = session

    def run(self) -> None:
        session = self.session
        session.connect()  # OutboundESLServer already sent it; this returns the channel data
        session.myevents()
        session.linger()
        session.call_command("transfer", "default XML queues")


def count_frames() -> None:
    original = ESLProtocol.handle_event

    def handle_event(self, event):  # type: ignore[no-untyped-def]
        ctype = event.headers.get("Content-Type", "?")
        FRAMES[ctype] = FRAMES.get(ctype, 0) + 1
        return original(self, event)

    ESLProtocol.handle_event = handle_event


def stats_server(port: int) -> None:
    def answer(sock, _address) -> None:  # type: ignore[no-untyped-def]
        sock.makefile("rb").readline()
        sock.sendall(json.dumps({"pid": os.getpid(), "frames": dict(FRAMES)}).encode() + b"\n")
        sock.close()

    StreamServer(("127.0.0.1", port), answer).start()


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    logging.basicConfig(level=logging.ERROR)
    if os.environ.get("FSGUARD_BENCH_STATS"):
        count_frames()
        stats_server(int(os.environ["FSGUARD_BENCH_STATS"]))
    OutboundESLServer(bind_address=host, bind_port=port, application=QueueApp, max_connections=100_000).listen()


if __name__ == "__main__":
    main()
