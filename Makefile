# Set-up is part of the two commands: the first use installs into .venv/, later uses start at once.
#   make run [ARGS="task=preprocess cluster=four"]   the main job (python run.py $(ARGS))
#   make test [PYTEST_ARGS=...]                      the tests, without the slow end-to-end ones
#   make test-slow                                   the slow end-to-end tests (CI runs them too)
#   make lint                                        ruff (format and lint) and mypy
#   make check                                       what CI runs: lint, test, test-slow
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow lint check
run: $(STAMP)
	$(PY) run.py $(ARGS)

test: $(STAMP)
	$(PY) -c "from bigimage.spark.session import check_java; check_java()"
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -c "from bigimage.spark.session import check_java; check_java()"
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy

check: lint test test-slow

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'Python 3.11 or newer is needed, found ' + sys.version.split()[0])"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)
