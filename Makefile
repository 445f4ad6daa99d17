# Set-up is part of the two commands: the first use installs into .venv/, later uses start at once.
#   make run [ARGS="task=preprocess cluster=four"]   the main job (python run.py $(ARGS))
#   make test [PYTEST_ARGS="-m 'not slow'"]           the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test
run: $(STAMP)
	$(PY) run.py $(ARGS)

test: $(STAMP)
	$(PY) -c "from bigimage.spark.session import check_java; check_java()"
	$(PY) -m pytest $(PYTEST_ARGS)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'Python 3.11 or newer is needed, found ' + sys.version.split()[0])"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)
