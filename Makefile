# Every target creates .venv and installs the project into it when needed, so each works on a
# fresh machine. The stamp file re-installs only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: run test check lint types bench compile clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The proxy with offline canned answers, on the embedded SQLite default. Clients send the printed
# development key, sk-course-llm-dev, unless LITELLM_MASTER_KEY is set (then that one).
run: $(STAMP)  ## the proxy on the embedded SQLite default, offline canned answers
	$(BIN)/course-llm serve --mock

test: $(STAMP)  ## the whole suite (PostgreSQL tests must run when CI is set)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff format --check course_llm tests bench alembic
	$(BIN)/ruff check course_llm tests bench alembic

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

bench: $(STAMP)  ## benchmarks with figures (not part of make test)
	$(BIN)/python bench/bench_logging.py
	$(BIN)/python bench/bench_usage.py
	$(BIN)/python bench/bench_proxy.py
	$(BIN)/python bench/bench_scale.py

compile: $(STAMP)  ## regenerate proxy_config.yaml from config/models.yaml
	$(BIN)/course-llm compile

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
