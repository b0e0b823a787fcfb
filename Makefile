# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs torch==2.13.0 (the CPU wheel) before the project, which is then
# installed with torch pinned (a pip constraint), so that pip never pulls a CUDA build nor another torch
# (the test extra's nnunetv2 and the runtime's dynamic-network-architectures depend on torch).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
IMAGE ?=
LABEL ?=
OUT ?= out/demo

# `make test` also runs the torch-free tests (pytest marker `torchfree`) on the Python and the packages of
# Slicer 5.10 (Python 3.12; numpy, scipy, pydicom, SimpleITK, ... at the versions of SLICER_PINS, the file the
# module's own install reads too), in a venv of their own. No torch there: no Python 3.12 torch wheel is on
# disk, and the engine's Slicer-side parts (export, sessions, reader, scene) must not need it.
SLICER_PYTHON ?= $(firstword $(wildcard /root/.pyenv/versions/3.12.1/bin/python) $(shell command -v python3.12 2>/dev/null))
SLICER_VENV := .venv-slicer510
SLICER_PINS := AdvSegAttack/Resources/slicer-5.10-constraints.txt
# The module's own requirements without the torch-based ones (monai, torch-dct, dynamic-network-architectures),
# plus what Slicer ships and the tests.
SLICER_REQUIREMENTS := AdvSegAttack/Resources/requirements.txt
SLICER_TEST_PACKAGES := $(shell grep -vE '^[[:space:]]*(\#|$$|monai|torch|dynamic-network-architectures)' $(SLICER_REQUIREMENTS)) \
	numpy scipy pydicom SimpleITK pytest slicer-core
TORCHFREE_TESTS = $(shell grep -l '^pytestmark = .*pytest.mark.torchfree' Testing/test_*.py)

.PHONY: setup demo test lint test-slicer-python

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	echo torch==2.13.0 > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install --quiet --constraint $(VENV)/torch-constraint.txt -e '.[test]'
	touch $@

demo: setup
	$(BIN)/advseg demo --out $(OUT) $(if $(IMAGE),--image $(IMAGE)) $(if $(LABEL),--label $(LABEL))

# The engine (and the module's Qt-free library) need Python 3.10; what the module runs before its Slicer version
# check must run on Python 3.9 (Slicer 5.8 and older), so that an old Slicer gets one sentence, not a traceback.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/lint_checks.py AdvSegAttackLib AdvSegAttack Testing benchmarks tools
	$(BIN)/vermin --no-tips --violations --target=3.10- AdvSegAttackLib AdvSegAttack/AdvSegAttackSceneLib
	$(BIN)/vermin --no-tips --violations --eval-annotations --feature union-types --target=3.9- \
		AdvSegAttack/AdvSegAttack.py AdvSegAttack/AdvSegAttackSceneLib/__init__.py \
		AdvSegAttack/AdvSegAttackSceneLib/supported.py

test: lint
	$(BIN)/python -m pytest -q
	@$(MAKE) --no-print-directory test-slicer-python

test-slicer-python:
	@if [ -z "$(SLICER_PYTHON)" ]; then \
		echo "No Python 3.12 (pyenv 3.12.1 or python3.12 on PATH): the tests on Slicer 5.10's Python and packages did not run (CI=true needs them)."; \
		test "$$CI" != true; \
	else \
		$(MAKE) --no-print-directory $(SLICER_VENV)/.installed && \
		PYTHONPATH="$(CURDIR)" $(SLICER_VENV)/bin/python -m pytest -q -p no:cacheprovider -m torchfree $(TORCHFREE_TESTS); \
	fi

$(SLICER_VENV)/.installed: $(SLICER_PINS) $(SLICER_REQUIREMENTS) Makefile
	rm -rf $(SLICER_VENV)
	$(SLICER_PYTHON) -m venv $(SLICER_VENV)
	$(SLICER_VENV)/bin/python -m pip install --quiet --only-binary :all: --constraint $(SLICER_PINS) $(foreach p,$(SLICER_TEST_PACKAGES),'$(p)')
	touch $@
