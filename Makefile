# Two commands for a newcomer: `make run` and `make test`. Everything lives in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: system-packages run test lint typecheck check test-faults test-deploy test-image schemas bench bench-pipeline clean-var

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/escalate up

system-packages:
	tools/install-system-packages

test: system-packages $(STAMP)
	$(BIN)/python -m pytest --ignore=tests/faults --ignore=tests/deploy/server --ignore=tests/image

# deploy/ checked by the tools a cluster would apply (issue 14): `docker compose config` and a
# server-side dry-run against a real kube-apiserver, both built from the Go proxy once and cached
# under ~/.cache/escalate/.
test-deploy: system-packages $(STAMP)
	$(BIN)/python -m pytest tests/deploy/server

# The container image built with podman from a locally made Debian base, its components run
# against the test suite's broker, SMTP sink and database.
test-image: system-packages $(STAMP)
	$(BIN)/python -m pytest tests/image

# One fault per case in a steady stream through the whole pipeline (issue 13): figures appended
# to var/faults/results.jsonl, the table of docs/RELIABILITY.md from `python -m tests.faults.report`.
test-faults: system-packages $(STAMP)
	$(BIN)/python -m pytest tests/faults

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy escalate schemas producers stream_processors consumers

check: lint typecheck test test-deploy test-image test-faults

schemas: $(STAMP)
	$(BIN)/escalate schemas export --out schemas/json

bench: $(STAMP)
	$(BIN)/python bench/classify_bench.py

# The pipeline beside Alertmanager and raw kafka-python (issue 11); JSON + table in var/bench/.
bench-pipeline: $(STAMP)
	$(BIN)/python bench/pipeline_bench.py --burst 500 --steady-rate 50 --steady-seconds 30 --raw 20000

clean-var:
	rm -rf var
