# Two commands do everything on a fresh machine:
#   make reproduce   set up, then run the main job on the embedded synthetic data (FAST=1: no training)
#   make test        set up, then lint (ruff) and run the tests (unit tests and the notebooks)
# `make lab` opens JupyterLab on the notebooks; `make book` renders them as a website in build/book/.
# `make artefacts` retrains from scratch the models and the sweep the notebooks read (over an hour on a CPU).
# `make lock` refreshes the pinned versions in constraints.txt (needs PyPI).
# `make peers` checks encnet against mmsegmentation's and PyTorch-Encoding's own code (needs PyPI).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt

.PHONY: setup reproduce test lab book book-check lab-check artefacts lock peers clean

setup: $(STAMP)

# Every package at its version in constraints.txt; the install is redone when pyproject.toml or
# constraints.txt changes. The venv's JupyterLab saves the widgets' state with a notebook (off by
# default), so that a notebook a learner ran and saved reopens with its widgets, not "Error displaying
# widget: model not found" (book/check_lab.py checks it).
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings

$(STAMP): pyproject.toml $(CONSTRAINTS) book/lab_overrides.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[test,export,tensorboard]"
	mkdir -p $(LAB_SETTINGS) && cp book/lab_overrides.json $(LAB_SETTINGS)/overrides.json
	touch $(STAMP)

# A fresh temporary venv, the package and its test extra installed unpinned (the newest releases
# pyproject.toml allows), then its pip freeze, without encnet itself, becomes constraints.txt.
lock:
	lock=$$(mktemp -d) && trap 'rm -rf "$$lock"' EXIT && \
	$(PYTHON) -m venv "$$lock" && \
	"$$lock/bin/python" -m pip install --quiet --upgrade pip && \
	"$$lock/bin/python" -m pip install --quiet ".[test,book,export,tensorboard]" && \
	{ sed -n '/^#/p' $(CONSTRAINTS); "$$lock/bin/python" -m pip freeze --exclude encnet; } > "$$lock/constraints.txt" && \
	mv "$$lock/constraints.txt" $(CONSTRAINTS)

# Retrain the SE-loss ablation (FCN, EncNet, EncNet + SE-loss; seeds 0-2) into build/results/, run all
# numbered notebooks with full settings into build/ (executed .ipynb and .html), print the recomputed table
# beside the committed one. `make reproduce FAST=1`: no training, the notebooks on the committed results.
reproduce: $(STAMP)
	$(BIN)/python notebooks/reproduce.py $(if $(FAST),--fast)

# Lint, then the unit tests, then the notebooks under the quick switch, checked by nbval.
test: $(STAMP)
	$(BIN)/ruff check .
	ENCNET_QUICK=1 $(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# The book: the committed, executed notebooks (never re-run here) as a static website, built by Sphinx
# with myst-nb (book/conf.py) into build/book/; warnings are errors. Equations are typeset by a MathJax
# copied into the book, so it reads offline: open build/book/index.html.
BOOK_STAMP := $(VENV)/.installed-book

$(BOOK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[test,export,tensorboard,book]"
	touch $(BOOK_STAMP)

book: $(BOOK_STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b html -c book notebooks build/book
	@echo "the book: build/book/index.html"

# The browser checks (headless Chromium and chromium-driver from Debian: apt-get install chromium
# chromium-driver): every page of the book loads, its equations render, no link is broken
# (book/check_book.py); the widgets work in JupyterLab and survive a save and a reload (book/check_lab.py).
book-check: book
	$(BIN)/python book/check_book.py build/book

lab-check: $(BOOK_STAMP)
	$(BIN)/python book/check_lab.py

# The two shipped models (notebooks/models/*.pt) and the SE-loss sweep (notebooks/results/), from scratch.
artefacts: $(STAMP)
	$(BIN)/python notebooks/artefacts.py

# The peers' code lives beside the project, never in .venv: .venv-peers is a venv of the
# same Python whose .pth file adds .venv's packages (torch, encnet, pytest) after its own,
# so the pip install below cannot change .venv. mmcv-lite is mmcv without compiled ops
# (mmseg 1.2.2 accepts mmcv < 2.2.0); ftfy and regex are imported by mmseg's package init;
# portalocker and scipy by PyTorch-Encoding's modules (tests/peers/pytorch_encoding.py).
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed

$(PEERS_STAMP): $(STAMP)
	test -x $(PEERS)/bin/python || $(BIN)/python -m venv $(PEERS)
	main=$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	peers=$$($(PEERS)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	echo "import site; site.addsitedir('$$main')" > "$$peers/encnet-project.pth"
	$(PEERS)/bin/python -m pip install --quiet "mmsegmentation==1.2.2" "mmengine==0.10.7" "mmcv-lite==2.1.0" ftfy regex \
		portalocker scipy
	touch $(PEERS_STAMP)

# PyTorch-Encoding's source (build/peers/), then the layouts and the equality tests of both peers.
peers: $(PEERS_STAMP)
	$(PEERS)/bin/python tests/peers/get_pytorch_encoding.py
	$(PEERS)/bin/python tests/peers/make_layouts_mmseg.py --check
	$(PEERS)/bin/python -m pytest tests/peers tests/test_layouts_mmseg.py tests/test_layouts_reference.py

clean:
	rm -rf $(VENV) $(PEERS) build
