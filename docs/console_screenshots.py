"""Screenshots of the console for docs/console.rst (``make screenshots``).

Runs the lab's scripted morning (``fsguard lab``: real stages, the simulator through real TCP)
into a throwaway SQLite database, serves that database with fsguard's admin listener in this
process, adds a supervisor, lets headless chromium log in and use the console as a person would
(lift a block from a call, hold a recording), and saves a PNG of each main page under
docs/console/. Needs chromium and chromedriver (``apt-get install -y chromium chromium-driver``).
"""

from gevent import monkey

monkey.patch_all()

import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

from fsguard.ops import lab, operators  # noqa: E402
from fsguard.service import logs
from fsguard.service.app import App  # noqa: E402
from fsguard.config import LoggingSettings  # noqa: E402
from fsguard.store.db import Database  # noqa: E402
from fsguard.store.models import Recording, RecordingMask  # noqa: E402
from fsguard.service.server import CallServer  # noqa: E402
from fsguard.ops.web.server import AdminServer  # noqa: E402

OUT = Path(__file__).resolve().parent / "console"
PASSWORD = "a demo password, not for production"


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    logs.configure(LoggingSettings(level="warning"))
    work = Path(tempfile.mkdtemp(prefix="fsguard-screenshots-"))
    report = lab.run(work)
    settings = lab.demo_settings(work)
    settings.http.enabled = True
    db = Database(settings.database)
    with db.begin() as session:
        operators.add(session, "sam", "supervisor", PASSWORD)
        rec = session.query(Recording).order_by(Recording.started_at).first()
        if rec is not None:   # an agent masked the card number for a moment
            session.add(RecordingMask(recording_id=rec.id, started_at=rec.started_at + timedelta(seconds=0.2),
                                      ended_at=rec.started_at + timedelta(seconds=0.5), requested_by="agent 1001"))
            rec.duration = rec.duration or 1.0
    app = App(settings, db=db)
    server = CallServer(app)
    server.start()
    http = AdminServer(app, server, listen="127.0.0.1:0")
    http.start()
    base = "http://%s:%d/console" % http.address
    profile = tempfile.mkdtemp(prefix="fsguard-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
    OUT.mkdir(exist_ok=True)
    try:
        browser.get(f"{base}/login")
        shot(browser, "login")
        browser.find_element(By.NAME, "name").send_keys("sam")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login").click()
        shot(browser, "glance")
        browser.get(f"{base}/calls")
        shot(browser, "calls")
        rejected = [c for c in report.calls if c.record and c.record["outcome"] == "rejected"]
        blocked = next((c for c in rejected if c.record["ani"]), rejected[0] if rejected else report.calls[0])
        browser.get(f"{base}/calls/{blocked.result.uuid}")
        shot(browser, "call")
        browser.get(f"{base}/lists")
        shot(browser, "lists")
        browser.get(f"{base}/customers")
        shot(browser, "customers")
        if rec is not None:
            browser.get(f"{base}/recordings/{rec.call_uuid}")
            browser.find_element(By.CSS_SELECTOR, "#hold-form input[name=reason]").send_keys("dispute 2026-114")
            browser.find_element(By.ID, "hold-button").click()
            shot(browser, "recording")
        browser.get(f"{base}/recordings")
        shot(browser, "recordings")
        browser.get(f"{base}/outbound")
        shot(browser, "outbound")
        browser.get(f"{base}/audit")
        shot(browser, "audit")
    finally:
        browser.quit()
        http.stop()
        server.stop(drain=1.0)
        db.dispose()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"screenshots in {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


def shot(browser: object, name: str) -> None:
    """The whole page (as tall as its content), as docs/console/NAME.png."""
    height = browser.execute_script("return document.documentElement.scrollHeight;")  # type: ignore[attr-defined]
    browser.set_window_size(1280, min(max(int(height) + 20, 600), 2400))  # type: ignore[attr-defined]
    browser.save_screenshot(str(OUT / f"{name}.png"))  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
