# fsguard: `make run` serves on the embedded SQLite default, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test bench lab lab-freeswitch clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	mkdir -p var
	$(BIN)/fsguard db upgrade
	$(BIN)/fsguard serve

# The gevent monitor reports any code that blocks the event loop for more than 100 ms.
test: install
	GEVENT_MONITOR_THREAD_ENABLE=1 GEVENT_MAX_BLOCKING_TIME=0.1 $(BIN)/pytest -q

bench: install
	$(BIN)/python bench/run.py

# fsguard deciding a scripted morning of calls (in-process, FreeSWITCH simulator): docs/lab.rst
lab: install
	$(BIN)/fsguard lab

# FreeSWITCH in the foreground with conf/freeswitch/ (fsguard runs in another terminal)
lab-freeswitch:
	sh conf/freeswitch/run-lab.sh

clean:
	rm -rf $(VENV) var build *.egg-info
