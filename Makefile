# The two commands of the README:
#   make lab    set up (venv, package, data, exercise stubs) and open the notebooks in JupyterLab
#   make test   set up if needed and run every test, notebooks included (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup lab test data exercises clean-venv

setup: $(VENV)/.installed data exercises

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

data: $(VENV)/.installed
	$(BIN)/python -m tutorial data
	$(BIN)/python -m tutorial data --preset hard

exercises: $(VENV)/.installed
	$(BIN)/python -m tutorial exercises

# jupyter refuses to run as root (the usual user in a container) without --allow-root
lab: setup
	$(BIN)/jupyter lab notebooks/ $$(if [ "$$(id -u)" = 0 ]; then echo --allow-root; fi)

test: setup
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
