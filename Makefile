# Two commands for a new machine (Debian, Python 3.11, root):
#   make demo   runs the whole flow on the embedded default (simulated cluster and Jenkins)
#   make test   runs the whole test suite on real parts (redis-server, kmock over HTTP,
#               Prometheus and Alertmanager)
# Each installs what it needs: a virtualenv from pyproject.toml and missing Debian packages.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# redis-server for the tests and the demo; redis-sentinel for the Sentinel failover test;
# prometheus (with promtool) and
# prometheus-alertmanager for the rule, dashboard and alerting tests, which start their own;
# wrk for the short run of bench/ingest.py in the tests; chromium (headless) for the status
# page's test in a real browser.
DEBIAN_PACKAGES := redis-server redis-sentinel prometheus prometheus-alertmanager wrk chromium

.PHONY: demo test run lint deps venv clean

venv: $(VENV)/.installed

# Debian's python3 makes no virtualenv before its pythonX.Y-venv package is installed (it
# leaves ensurepip out): on a fresh machine `python3 -m venv` fails "ensurepip is not
# available"; the package is installed then, and the virtualenv made again.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) || { \
	  rm -rf $(VENV); \
	  package=python$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv; \
	  echo "installing Debian package $$package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$package && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Installs the Debian packages the tests and the demo start, only when one is missing.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing; \
	fi

demo: venv
	$(BIN)/ci-autoscaler demo

# Four pytest processes (pytest-xdist) on CI's two cores: the suite's servers and files are per
# test, and most of its time is spent waiting on the processes and servers it starts (at two
# processes the cores sat 40-50% idle; four took the suite from 820 s to 532 s on one machine).
# PYTEST_WORKERS=0 runs it in one process. `--dist loadscope` keeps each module on one worker,
# modules handed out most tests first (xdist 3.8's --loadscope-reorder is on by default), but
# the long ones (tests/support/schedule.py's list) first, at most two at a time: else the
# one-test modules (the chaos and concurrency tests among them) came last; all long ones first
# (aa3e5950) was slower and reverted: four operator modules started their stacks at once. The
# operator modules share a module-scoped stack of processes whose tests build on
# each other's state (test_warm_operator's hit counters, a pool's agents); spread by `load`, each
# worker started its own stack and saw part of the story (3 of 12 failed under `-n 2`).
# `loadgroup` with xdist_group marks would be finer, but xdist 3.8 cannot rename pytest 9's node
# ids, so it groups nothing.
PYTEST_WORKERS ?= 4

# Python's bytecode caches on for the tests even where the environment turns them off
# (PYTHONDONTWRITEBYTECODE=1 on these machines): else every process a test starts compiles the
# project's modules again (about 0.3 s of CPU each) and each pytest worker redoes its assertion
# rewriting of every test module. An empty value is "not set" to Python.
test: export PYTHONDONTWRITEBYTECODE =
test: venv deps lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope

lint: venv
	$(BIN)/lint-imports

# Runs web, worker and reconcile against the environment's REDIS_URL, Kubernetes and Jenkins
# (see README): nothing from Debian (the packages above are the tests' and the demo's).
run: venv
	$(BIN)/ci-autoscaler run

clean:
	rm -rf $(VENV) .pytest_cache
