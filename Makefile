# Refinery: two commands do everything on a fresh machine.
#   make demo   set-up, bootstrap, start the stack, one request to vLLM, one via the gateway
#   make test   set-up, lint (ruff, mypy), then the suite against real processes (~20 min)
#   make test-slow  the closed loops (label, generation, chat) and other whole-stack suites
.DEFAULT_GOAL := help
SHELL := /bin/bash

PY := .venv/bin/python
export PYTHONPATH := $(CURDIR)/services:$(CURDIR)
REFINERY := ./refinery

.PHONY: help setup demo up down status test test-slow lint bench faults soak lock clean

help:
	@echo "make demo   - the closed loop from scratch: shift, drift, retrain, promote, plot"
	@echo "              (TASK=tasks/reply.yaml or tasks/reply-chat.yaml: the free-text task)"
	@echo "make test   - set up, run the test suite (real Kafka, MLflow, vLLM)"
	@echo "make test-slow - the slow suites: closed loops per task kind, own models, failover"
	@echo "make bench  - gateway vs vLLM, vLLM spin limit vs its own, feedback vs bare FastAPI, monitor vs bare faust, training vs"
	@echo "              a plain Trainer, side by side; writes docs/BENCHMARKS.md"
	@echo "make faults - faults on real processes under traffic (docs/RELIABILITY.md; ~25 min)"
	@echo "make soak   - a rate ladder and a 20-minute soak with one retraining (~30 min)"
	@echo "make up / down / status / lint / lock / clean"

setup:
	@infra/setup.sh

# TASK picks the task file: `make demo TASK=tasks/reply.yaml` plays the free-text reply task,
# tasks/reply-chat.yaml the same as chat; refinery.yaml (support triage) otherwise.
demo: setup
	$(if $(TASK),REFINERY_TASK_FILE=$(TASK)) $(REFINERY) demo --fresh
	@echo "Stack is running; \`./refinery status\` to look, \`make down\` to stop."

up: setup
	$(REFINERY) up

down:
	@if [ -x $(PY) ]; then $(REFINERY) down; fi

status:
	$(REFINERY) status

PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=15

# pytest's 5 (no test selected: PYTEST_ARGS named only slow tests, or only fast ones) is
# not a failure of either target.
# On two workers (pytest-xdist), each with a session stack and a port plan of its own
# (tests/ports.py), a file's tests all on one: the suite mostly waits on the processes it
# starts (on one worker it kept ~0.9 of the 2 cores busy), and two took 0.67x the time.
TEST_WORKERS ?= 2
test: setup lint
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Whole closed loops and other suites that start stacks of their own; .ci/run runs both.
# -rP: what the loops print (timeline, quality by phase and domain) shows for a pass too.
test-slow: setup
	$(PYTEST) -m slow -rP $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Speed targets live here, measured side by side in one run (never in unit tests); the run
# writes docs/BENCHMARKS.md (bench/report.py), and fails if a bench left no figures.
# Merged serving on (REFINERY_SERVE_MERGED): the promoted model's cost is measured merged,
# and runtime LoRA's beside it.
bench: export REFINERY_SERVE_MERGED = 1
bench: setup
	$(REFINERY) up
	$(PY) -m bench.report --clear
	$(PY) -m bench.gateway
	$(PY) -m bench.vllm_spin
	$(PY) -m bench.monitor
	$(PY) -m bench.retrainer
	$(PY) -m bench.report

# Faults and soak (docs/RELIABILITY.md): each starts a stack of its own on ports 31000+.
faults: setup
	$(PY) -m bench.faults
	$(PY) -m bench.faults --nodes 3
	$(PY) -m bench.first_start

soak: setup
	$(PY) -m bench.soak

lint: setup
	$(PY) -m ruff check services tests bench
	$(PY) -m ruff format --check services tests bench
	$(PY) -m mypy
	source var/toolchain.env && $$REFINERY_PROMTOOL check config infra/prometheus/prometheus.yml \
	  && $$REFINERY_PROMTOOL test rules infra/prometheus/rules_test.yml

# Re-lock after changing dependencies in pyproject.toml.
lock:
	uv pip compile pyproject.toml --extra dev -p 3.11 -q --no-header -o requirements.lock
	sed -i '1i # Locked from pyproject.toml (with the dev extra) by `make lock`; infra/setup.sh keys the cached venv by this file.' requirements.lock

clean: down
	rm -rf var .venv
