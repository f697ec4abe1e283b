# ocr-stream developer entry points. `make test` goes from a bare checkout to a verdict:
# virtualenv, Java, the Kafka jars (Maven Central), redis-server, the tests' S3 server (built
# with Go), then lint, types and tests.
# The local stack listens on 127.0.0.1 only; `make down` stops everything it started.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
STACK := bash deploy/local/stack.sh
# The stack scripts and test fixtures run `python -m producer_tools.topics` with this interpreter.
export OCR_PYTHON := $(CURDIR)/$(VENV)/bin/python

.PHONY: install deps test-deps up up-stack down status test unit integration lint typecheck \
	demo chaos chaos-smoke bench-cpu clean

# pyproject.toml and the CPU engine's pin are the only inputs: editing them reinstalls.
# The tests run the CPU engine: the cpu extra, then RapidOCR without its dependencies (it
# would pull the GUI opencv-python over the extra's headless build; deploy/cpu-engine.txt).
$(STAMP): pyproject.toml deploy/cpu-engine.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,cpu]'
	$(VENV)/bin/pip install -q --no-deps -r deploy/cpu-engine.txt
	touch $(STAMP)

$(VENV): $(STAMP)

install: $(VENV)

# Java 17+, Maven, the Kafka jars (cached in ~/.cache/ocr-stream) and redis-server.
deps:
	$(STACK) deps

# deps, the S3 server the s3:// tests read from (built once with Go, cached likewise), the
# Go interop clients' modules (tests/support/go), and Keycloak (Maven Central, cached; needs
# a Java 21+) for the Kafka OAuth tests.
test-deps:
	$(STACK) test-deps

# Kafka + Redis + one consumer (engine auto) in the background.
up: $(VENV) deps
	OCR_STACK_CONSUMER=$${OCR_STACK_CONSUMER:-1} $(STACK) up

# Kafka + Redis only, for benchmarks and tests that run their own consumers.
up-stack: $(VENV) deps
	OCR_STACK_CONSUMER=0 $(STACK) up

down:
	$(STACK) down

status:
	@$(STACK) status || true

test: $(VENV) test-deps lint typecheck
	$(VENV)/bin/pytest -q -m "not gpu" tests/unit tests/integration
	$(MAKE) --no-print-directory chaos-smoke

unit: $(VENV)
	$(VENV)/bin/pytest -q -m "not gpu" tests/unit

# Starts Kafka + Redis for the session when they are not already up, and stops them after.
integration: $(VENV) test-deps
	$(VENV)/bin/pytest -q -m "not gpu" tests/integration

# Commit subjects of at most 72 characters, for commits after the check began.
lint: $(VENV)
	$(VENV)/bin/ruff check
	$(VENV)/bin/python .ci/commit_subjects.py

typecheck: $(VENV)
	$(VENV)/bin/mypy

demo: $(VENV) deps
	bash deploy/local/demo.sh

chaos: $(VENV) deps
	$(VENV)/bin/python -m tests.chaos

# A slice of the fault suite for every CI run (about 2 minutes): poison records of every
# class (codecs, a 5,000-digit integer, registry framing, a dead letter too large for the
# DLQ) and a slow-rendering PDF beside small ones, one round each, on the suite's own stack.
chaos-smoke: $(VENV) deps
	$(VENV)/bin/python -m tests.chaos --rounds 1 --scenario poison \
		--scenario poison-huge-dlq --scenario slow-render \
		--kafka-port 29192 --redis-port 26479 \
		--out .run/chaos-smoke --run-dir .run/chaos-smoke

bench-cpu: up-stack
	$(VENV)/bin/python bench/pipeline_cpu.py

# Stops the stack first: removing .run/ under running processes would lose their PID files.
# The Kafka jar cache outside the repo stays (rm -rf ~/.cache/ocr-stream to drop it).
clean:
	$(STACK) down
	rm -rf $(VENV) .run .mypy_cache .pytest_cache .ruff_cache .hypothesis *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
