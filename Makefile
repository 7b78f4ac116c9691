# fsguard: `make run` serves on the embedded SQLite default, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test-tools run test test-monitor bench lab lab-freeswitch capture screenshots clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# What the tests run besides Python, from Debian, installed only when missing and only as root
# with apt (CI runs as root on a clean clone; elsewhere the line printed says what to install):
# espeak-ng and sox make the review tests' speech, promtool (prometheus) checks the alert rules,
# chromium and chromium-driver drive the console's browser tests. A missing tool fails its tests.
TEST_TOOLS := espeak-ng:espeak-ng sox:sox promtool:prometheus chromium:chromium chromedriver:chromium-driver
test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing for the tests:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "!! the tests need:$$missing (apt-get install$$missing, as root)" >&2; fi; \
	fi

# An installed fsguard keeps its state in /var/lib/fsguard; the checkout's keeps it in var/.
run: export FSGUARD_DATABASE_URL ?= sqlite:///$(CURDIR)/var/fsguard.db
run: export FSGUARD_RECORDING_DIR ?= $(CURDIR)/var/recordings
run: install
	mkdir -p var/recordings
	$(BIN)/fsguard db upgrade
	$(BIN)/fsguard serve

test: install test-tools
	$(BIN)/pytest -q

# The same suite with the gevent monitor reporting any code that blocks the event loop for more
# than 100 ms. Its reports go to stderr, where CLI tests read fsguard's own one-line errors, so
# a loaded machine can fail those: it is a diagnostic run, not the gate.
test-monitor: install test-tools
	GEVENT_MONITOR_THREAD_ENABLE=1 GEVENT_MAX_BLOCKING_TIME=0.1 $(BIN)/pytest -q

bench: install
	$(BIN)/python bench/run.py

# fsguard deciding a scripted morning of calls (in-process, FreeSWITCH simulator): docs/lab.rst
lab: install
	$(BIN)/fsguard lab

# PNGs of the console's main pages for docs/console.rst (needs chromium and chromium-driver)
screenshots: install
	$(BIN)/python docs/console_screenshots.py

# FreeSWITCH in the foreground with conf/freeswitch/ (fsguard runs in another terminal)
lab-freeswitch:
	sh conf/freeswitch/run-lab.sh

clean:
	rm -rf $(VENV) var build *.egg-info

# Re-record tests/captures/fs-1.10.12/ from a real FreeSWITCH with fsguard behind a recording
# proxy (tests/captures/fs-1.10.12/README.md); the tests only read the files.
capture: install
	$(BIN)/python -m fsguard_testing.capture --out tests/captures/fs-1.10.12
