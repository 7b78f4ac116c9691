"""The console as a supervisor uses it, in a real headless chromium (Debian's chromium and
chromedriver, installed by .ci/run): log in, find a blocked call, unblock the caller, play a
recording, read the audit trail; and a caller name carrying a script stays text.

One browser for the whole session. Without chromium these tests FAIL (they are part of the gate).
"""

from __future__ import annotations

import shutil
import tempfile
from types import SimpleNamespace
from typing import Any, Iterator

import gevent
import pytest

from consolekit import PASSWORD, console_node, write_wav
from fsguard.rules import lists
from fsguard_testing.fakeswitch import Caller, FakeFreeSWITCH
from fsguard_testing.waiting import settle

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900"]


def chromium_driver(user_data_dir: str) -> Any:
    """A chromium WebDriver; fails the test run loudly when chromium or chromedriver is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("chromium and chromedriver are needed for the console's browser tests: "
                    "apt-get install -y chromium chromium-driver (.ci/run does it)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="fsguard-chromium-")
    driver = chromium_driver(profile)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def node(start_guard, settings, db, browser):
    with console_node(start_guard, settings, db) as (guard, server):
        host, port = server.address
        browser.delete_all_cookies()
        yield SimpleNamespace(guard=guard, db=db, base=f"http://{host}:{port}",
                              fs=FakeFreeSWITCH(guard.address, time_scale=0.005))


def wait_for(condition: Any, timeout: float = 20.0) -> Any:
    """Poll a condition while letting fsguard's greenlets (same process) serve the browser."""
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {condition}")):
        while True:
            value = condition()
            if value:
                return value
            gevent.sleep(0.05)


# Selenium talks to chromedriver over monkey-patched sockets: while it waits, the hub serves the
# browser's requests to fsguard, which runs in this same process.


def open_page(browser: Any, url: str) -> None:
    browser.get(url)


def call_js(browser: Any, script: str, *args: Any) -> Any:
    return browser.execute_script(script, *args)


def click(browser: Any, css: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, css).click()


def type_into(browser: Any, css: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, css).send_keys(text)


def text_of(browser: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def log_in(browser: Any, base: str, name: str) -> None:
    open_page(browser, f"{base}/console/")
    wait_for(lambda: "/console/login" in browser.current_url)
    type_into(browser, "input[name=name]", name)
    type_into(browser, "input[name=password]", PASSWORD)
    click(browser, "#login")
    wait_for(lambda: "/console/glance" in browser.current_url)
    assert text_of(browser, "#whoami").startswith(name)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_supervisor_unblocks_a_caller_plays_the_recording_and_reads_the_audit_trail(node, browser):
    with node.db.begin() as session:
        lists.add(session, lists.make_spec("+12025550143", kind="block", level=8, reason="abusive caller",
                                           source="cli", added_by="night-shift"))
    blocked = node.fs.call(Caller(ani="12025550143", dnis="5000", name="Angry Caller"))
    assert blocked.outcome == "hungup" and not blocked.answered
    recorded = node.fs.call(Caller(ani="12025550150", dnis="5000"))
    assert recorded.outcome == "routed"
    settle(node.guard)
    with node.db.begin() as session:
        from fsguard.store.models import Recording

        write_wav(session.query(Recording).filter_by(call_uuid=recorded.uuid).one().path, seconds=3.0)

    log_in(browser, node.base, "sam")
    # find the blocked call: the calls page filtered on rejected calls, then the call itself
    open_page(browser, f"{node.base}/console/calls?outcome=rejected")
    click(browser, "table.calls tbody tr a")
    wait_for(lambda: blocked.uuid in browser.current_url)
    why = text_of(browser, "#explanation")                     # the words of `fsguard calls show`
    assert "screening: reject" in why and "abusive caller" in why, why
    assert "+12025550143 block level 8" in text_of(browser, "#caller-entries")
    # unblock the caller, with a reason
    type_into(browser, "#caller-entries input[name=reason]", "customer proved who they are")
    click(browser, "#caller-entries button.remove-entry")
    wait_for(lambda: "removed:" in browser.page_source)
    assert "No list entry covers this caller" in text_of(browser, "#caller-entries")
    assert node.fs.call(Caller(ani="12025550143", dnis="5000")).outcome == "routed"

    # play the other call's recording: the audio element loads it and reports its length
    open_page(browser, f"{node.base}/console/recordings/{recorded.uuid}")
    duration = wait_for(lambda: call_js(browser, "var a = document.getElementById('player');"
                                                 "return a && a.readyState >= 1 ? a.duration : 0;"))
    assert 2.5 < duration < 3.5
    call_js(browser, "document.getElementById('player').play();")
    wait_for(lambda: call_js(browser, "return document.getElementById('player').currentTime;") > 0)

    # the audit trail says who lifted the block and why
    open_page(browser, f"{node.base}/console/audit")
    rows = text_of(browser, "#audit")
    assert "sam console list.remove +12025550143 customer proved who they are" in rows


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_script_in_a_caller_name_is_shown_as_text_and_never_runs(node, browser):
    evil = ('<script>document.title="owned"</script>'
            '<img src=x onerror="document.body.setAttribute(\'data-owned\', 1)">')
    result = node.fs.call(Caller(ani="12025550199", dnis="5000", name=evil))
    assert result.outcome == "routed"
    settle(node.guard)
    log_in(browser, node.base, "vic")
    for path in ("/console/calls", f"/console/calls/{result.uuid}"):
        open_page(browser, node.base + path)
        wait_for(lambda: "fsguard" in browser.title)
        assert browser.title != "owned"
        assert call_js(browser, "return document.body.getAttribute('data-owned');") is None
        shown = text_of(browser, ".caller-name")
        assert "<script>" in shown and "onerror" in shown          # the name, as text
    # a viewer is not offered a change; the server refuses one anyway (tests/test_console.py)
    assert "block-form" not in browser.page_source


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_csv_import_shows_its_progress_and_bad_lines_then_the_lists_and_glance_pages(node, browser, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("number,kind,level,reason\n+12025550143,block,8,abusive\nnot-a-number,block,8,x\n")
    log_in(browser, node.base, "sam")
    open_page(browser, f"{node.base}/console/lists/import")
    type_into(browser, "input[name=file]", str(bad))
    click(browser, "#import-form button")
    wait_for(lambda: text_of(browser, "#import-status").startswith("refused"))
    assert call_js(browser, "return document.getElementById('import-progress').value;") == 100
    report = text_of(browser, "#import-report")
    assert "nothing was written" in report and "not-a-number" in report and "3" in report.split()
    # the same file with "skip bad rows": the good row is written
    open_page(browser, f"{node.base}/console/lists/import")
    type_into(browser, "input[name=file]", str(bad))
    click(browser, "input[name=skip_bad]")
    click(browser, "#import-form button")
    wait_for(lambda: text_of(browser, "#import-status") == "done")
    open_page(browser, f"{node.base}/console/lists?kind=block")
    assert "+12025550143" in text_of(browser, "#entries")
    open_page(browser, f"{node.base}/console/glance")
    assert call_js(browser, "return document.querySelectorAll('svg.chart polyline').length;") == 5
    assert "database: ok" in text_of(browser, "#readiness")
