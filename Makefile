# Refinery: two commands do everything on a fresh machine.
#   make demo   set-up, bootstrap, start the stack, one request to vLLM, one via the gateway
#   make test   set-up, lint (ruff, mypy), then the whole suite against real processes
.DEFAULT_GOAL := help
SHELL := /bin/bash

PY := .venv/bin/python
export PYTHONPATH := $(CURDIR)
REFINERY := ./refinery

.PHONY: help setup demo up down status test lint bench lock clean

help:
	@echo "make demo   - the closed loop from scratch: shift, drift, retrain, promote, plot"
	@echo "make test   - set up, run the test suite (real Kafka, MLflow, vLLM)"
	@echo "make bench  - gateway overhead vs vLLM, feedback req/s vs bare FastAPI, monitor events/s, training examples/s"
	@echo "make up / down / status / lint / lock / clean"

setup:
	@infra/setup.sh

demo: setup
	$(REFINERY) demo --fresh
	@echo "Stack is running; \`./refinery status\` to look, \`make down\` to stop."

up: setup
	$(REFINERY) up

down:
	@if [ -x $(PY) ]; then $(REFINERY) down; fi

status:
	$(REFINERY) status

test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Speed targets live here, measured side by side in one run (never in unit tests).
bench: setup
	$(REFINERY) up
	$(PY) -m bench.gateway
	$(PY) -m bench.monitor
	$(PY) -m bench.retrainer

lint: setup
	$(PY) -m ruff check services tests bench
	$(PY) -m ruff format --check services tests bench
	$(PY) -m mypy services

# Re-lock after changing dependencies in pyproject.toml.
lock:
	uv pip compile pyproject.toml --extra dev -p 3.11 -q --no-header -o requirements.lock
	sed -i '1i # Locked from pyproject.toml (with the dev extra) by `make lock`; infra/setup.sh keys the cached venv by this file.' requirements.lock

clean: down
	rm -rf var .venv
