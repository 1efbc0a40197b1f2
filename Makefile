# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
# Re-install whenever pyproject.toml changes.
STAMP     := $(VENV)/.installed-$(shell cksum pyproject.toml 2>/dev/null | cut -d' ' -f1)
DEMO_DIR  ?= demo_output
BACKEND   ?=

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the 2.13.0 CPU wheel; tensorflow-cpu 2.21 brings Keras 3;
	# ptychodus 1.7.0 (and h5py) for the ptychodus integration and its file tests.
	$(PY) -m pip install --quiet -e ".[torch,tensorflow,test,tracking,hdf5,ptychodus]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh "$(DEMO_DIR)" "$(BACKEND)"

test: $(STAMP)
	$(PY) -m pytest -n auto
	$(PY) -m tox -e core

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(DEMO_DIR) .tox .pytest_cache .hypothesis
