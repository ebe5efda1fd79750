# The README's two commands: `make demo` and `make test`. Both install into .venv first when it is missing.
# PYNX=auto installs ESRF PyNX (CPU build) when ../shared/third_party holds its wheel; PYNX=no never does
# (CI's first environment: the suite as a user without ../shared runs it, the PyNX tests skipped).
PY ?= python3
VENV ?= .venv
PYNX ?= auto
VPY := $(VENV)/bin/python
SHARED ?= ../shared
PYNX_WHEEL := $(SHARED)/third_party/pynx-2022.1-py3-none-any.whl

.PHONY: install demo test test-pynx test-all docs bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	# bcdi 0.3.1 declares Python < 3.11 and exact old pins, but runs on 3.11 with its real needs above.
	$(VPY) -m pip install -q --no-deps --ignore-requires-python bcdi==0.3.1
	@if [ "$(PYNX)" = no ]; then echo "PYNX=no: ESRF PyNX not installed, PyNX tests will be skipped"; \
	  elif [ -f $(PYNX_WHEEL) ]; then $(VPY) -m pip install -q $(PYNX_WHEEL); \
	  else echo "PyNX wheel not found at $(PYNX_WHEEL): PyNX tests will be skipped"; fi
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/bcdi-gapfill demo --out demo_output

test: install
	$(VPY) -m pytest -q -m "not slow" tests

# The PyNX tests with PyNX installed; a PyNX skip is a failure here (tests/conftest.py).
test-pynx: install
	@if $(VPY) -c "import pynx.cdi" 2>/dev/null; then \
	  BCDI_GAPFILL_REQUIRE_PYNX=1 $(VPY) -m pytest -q -m "pynx and not slow" tests; \
	else echo "ESRF PyNX is not installed in $(VENV) (no wheel at $(PYNX_WHEEL)): no PyNX tests to run"; fi

test-all: install
	$(VPY) -m pytest -q tests

# The API reference from the numpydoc docstrings (Sphinx, warnings as errors) into docs/_build/html.
docs: install
	$(VPY) -m pip install -q -e '.[docs]'
	$(VPY) -m sphinx -q -W --keep-going -b html docs docs/_build/html

bench: install
	$(VPY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .venv-nopynx build *.egg-info demo_output docs/_build
