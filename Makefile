# Two commands do everything on a fresh machine:
#   make reproduce   set up, then run the main job on the embedded synthetic data
#   make test        set up, then run the tests (unit tests and the notebooks)
# `make lab` opens JupyterLab on the notebooks.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup reproduce test lab clean

setup: $(STAMP)

# The install is redone only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# All numbered notebooks, full settings, into build/ (executed .ipynb and .html).
reproduce: $(STAMP)
	$(BIN)/python notebooks/reproduce.py

# Unit tests, then the notebooks under the quick switch, checked by nbval.
test: $(STAMP)
	ENCNET_QUICK=1 $(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) build
