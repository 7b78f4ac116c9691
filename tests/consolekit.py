"""What the console's tests share: operators in the test database, a running admin listener, a
small cookie-keeping HTTP client that reads a page's CSRF token, and a recording with real audio."""

from __future__ import annotations

import http.client
import math
import re
import struct
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fsguard.ops import operators

PASSWORD = "correct horse battery"
#: name -> role of the operators every console test has
OPERATORS = {"ada": "admin", "sam": "supervisor", "vic": "viewer"}


@contextmanager
def console_node(start_guard: Any, settings: Any, db: Any) -> Iterator[tuple[Any, Any]]:
    """fsguard with screening, recording and routing, its admin listener and the test operators:
    (the running guard, the admin server), stopped afterwards."""
    from fsguard.ops.web.server import AdminServer

    settings.policy.stages = ["screening", "recording", "routing"]
    settings.recording.mode = "all"
    settings.recording.consent = False
    add_operators(db)
    guard = start_guard()
    server = AdminServer(guard.app, guard.server, listen="127.0.0.1:0")
    server.start()
    try:
        yield guard, server
    finally:
        server.stop()


def add_operators(db: Any) -> None:
    with db.begin() as session:
        for name, role in OPERATORS.items():
            operators.add(session, name, role, PASSWORD)


class Page:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.all_headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def csrf(self) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.text)
        assert found, "no CSRF token on the page"
        return found.group(1)


class Browser:
    """A client that keeps cookies like a browser (no redirects followed: tests look at them)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.cookies: dict[str, str] = {}
        self.set_cookie_lines: list[str] = []

    def request(self, method: str, path: str, *, form: dict[str, Any] | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Page:
        conn = http.client.HTTPConnection(*self.address, timeout=30)
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        page = Page(resp.status, resp.getheaders(), resp.read())
        conn.close()
        for name, value in page.all_headers:
            if name.lower() == "set-cookie":
                self.set_cookie_lines.append(value)
                key, _, rest = value.partition("=")
                val = rest.split(";", 1)[0]
                if val in ("", '""') or "Max-Age=0" in value or "expires=Thu, 01 Jan 1970" in value:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = val
        return page

    def get(self, path: str, **kw: Any) -> Page:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, Any], **kw: Any) -> Page:
        return self.request("POST", path, form=form, **kw)

    def login(self, name: str, password: str = PASSWORD) -> Page:
        form = self.get("/console/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
        return self.post("/console/login", {"name": name, "password": password, "login_token": token})

    def csrf(self, path: str = "/console/calls") -> str:
        return self.get(path).csrf()


def write_wav(path: str | Path, seconds: float = 2.0, rate: int = 8000) -> None:
    """A stereo 8 kHz WAV, as FreeSWITCH writes a call's recording (a tone on each leg)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = bytearray()
        for i in range(int(seconds * rate)):
            a = int(8000 * math.sin(2 * math.pi * 440 * i / rate))
            b = int(8000 * math.sin(2 * math.pi * 660 * i / rate))
            frames += struct.pack("<hh", a, b)
        out.writeframes(bytes(frames))
