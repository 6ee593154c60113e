# Two commands do everything on a fresh machine:
#   make reproduce   set up, then run the main job on the embedded synthetic data (FAST=1: no training)
#   make test        set up, then run the tests (unit tests and the notebooks)
# `make lab` opens JupyterLab on the notebooks.
# `make peers` checks encnet against mmsegmentation's and PyTorch-Encoding's own code (needs PyPI).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup reproduce test lab peers clean

setup: $(STAMP)

# The install is redone only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Retrain the SE-loss ablation (FCN, EncNet, EncNet + SE-loss; seeds 0-2) into build/results/, run all
# numbered notebooks with full settings into build/ (executed .ipynb and .html), print the recomputed table
# beside the committed one. `make reproduce FAST=1`: no training, the notebooks on the committed results.
reproduce: $(STAMP)
	$(BIN)/python notebooks/reproduce.py $(if $(FAST),--fast)

# Unit tests, then the notebooks under the quick switch, checked by nbval.
test: $(STAMP)
	ENCNET_QUICK=1 $(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

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
