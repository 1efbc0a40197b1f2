# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
# Re-install whenever pyproject.toml changes.
STAMP     := $(VENV)/.installed-$(shell cksum pyproject.toml 2>/dev/null | cut -d' ' -f1)
DEMO_DIR  ?= demo_output
BACKEND   ?=

QUALITY_ARGS ?=

.PHONY: demo test bench quality install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the 2.13.0 CPU wheel; tensorflow-cpu 2.21 brings Keras 3; ptychodus
	# 1.7.0 (and h5py) for the ptychodus integration; the reference and quality extras
	# (pty-chi, scikit-image) keep that torch: their tests are quick, make quality needs them.
	$(PY) -m pip install --quiet -e ".[torch,tensorflow,test,tracking,hdf5,ptychodus,reference,quality]"
	# pty-chi pulls torchvision, whose PyPI wheel is a CUDA build: beside the CPU torch its ops
	# do not load and `import torchvision` raises RuntimeError, which takes down any program
	# that imports pty-chi (ptychodus included: it expects ImportError). pty-chi uses it only
	# for random initial guesses; without it, ptychodus disables its pty-chi backend and our
	# adaptor (ptycho/iterative/pty_chi.py) stands in for the one class pty-chi imports.
	$(PY) -m pip uninstall --quiet --yes torchvision
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh "$(DEMO_DIR)" "$(BACKEND)"

test: $(STAMP)
	$(PY) -m pytest -n auto
	$(PY) -m tox -e core

bench: $(STAMP)
	$(PY) -m benchmarks

# Reconstruction quality on held-out objects against pty-chi and a constant image
# (benchmarks/README.md, "Quality"); make quality QUALITY_ARGS=--quick for a short run.
quality: $(STAMP)
	$(PY) -m benchmarks.quality --readme benchmarks/README.md $(QUALITY_ARGS)

clean:
	rm -rf $(DEMO_DIR) quality_output .tox .pytest_cache .hypothesis
