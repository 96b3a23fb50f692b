# `make train` and `make test` set up .venv on first use (Python >= 3.10 needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup train test test-slow lint bench-batching bench-loader bench-ds2 clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,optuna,lm]"
	touch $(STAMP)

train: $(STAMP)  ## the default recipe; pass overrides as ARGS="trainer.max_epochs=3"
	$(PY) -m framework.train $(ARGS)

test: $(STAMP)  ## lint, then the test suite (slow cases excluded)
	$(VENV)/bin/ruff check framework recipes tests
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check framework recipes tests

bench-batching: $(STAMP)
	$(PY) -m framework.bench batching

bench-loader: $(STAMP)
	$(PY) -m framework.bench loader

bench-ds2: $(STAMP)  ## e.g. ARGS="trainer.device=cuda trainer.precision=bf16 --sweep-batch 32,64,128"
	$(PY) -m framework.bench ds2 $(ARGS)

clean:
	rm -rf runs multirun outputs .pytest_cache
