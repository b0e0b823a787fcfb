# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs torch==2.13.0 (the CPU wheel) before the project,
# so that pip never pulls a CUDA build of torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
IMAGE ?=
LABEL ?=
OUT ?= out/demo

.PHONY: setup demo test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/advseg demo --out $(OUT) $(if $(IMAGE),--image $(IMAGE)) $(if $(LABEL),--label $(LABEL))

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/lint_checks.py AdvSegAttackLib AdvSegAttack Testing benchmarks tools

test: lint
	$(BIN)/python -m pytest -q
