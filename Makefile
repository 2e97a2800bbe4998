# Every target installs what it needs into .venv first (torch's local CPU build, then the package).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2
SOURCES := sb3_trpo tests benchmarks docs/conf.py setup.py

.PHONY: install demo test pytest lint format check-codestyle type doc benchmark-speed benchmark-learning clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned: the local CPU build. An unpinned torch pulls gigabytes of CUDA wheels.
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[tests,docs,extra,zoo]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m sb3_trpo.demo --output demo_output

test: install pytest

pytest: install
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check $(SOURCES)

format: install
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

check-codestyle: install
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/ruff check $(SOURCES)

type: install
	$(BIN)/mypy sb3_trpo

doc: install
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

benchmark-speed: install
	$(BIN)/python benchmarks/speed.py

benchmark-learning: install
	$(BIN)/python benchmarks/learning.py

clean:
	rm -rf $(VENV) build dist *.egg-info docs/_build .pytest_cache .mypy_cache .ruff_cache demo_output
