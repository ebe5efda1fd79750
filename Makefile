# The README's two commands: `make demo` and `make test`. Both install into .venv first when it is missing.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
SHARED ?= ../shared
PYNX_WHEEL := $(SHARED)/third_party/pynx-2022.1-py3-none-any.whl

.PHONY: install demo test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	# bcdi 0.3.1 declares Python < 3.11 and exact old pins, but runs on 3.11 with its real needs above.
	$(VPY) -m pip install -q --no-deps --ignore-requires-python bcdi==0.3.1
	@if [ -f $(PYNX_WHEEL) ]; then $(VPY) -m pip install -q $(PYNX_WHEEL); \
	  else echo "PyNX wheel not found at $(PYNX_WHEEL): PyNX tests will be skipped"; fi
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/bcdi-gapfill demo --out demo_output

test: install
	$(VPY) -m pytest -q -m "not slow" tests

test-all: install
	$(VPY) -m pytest -q tests

bench: install
	$(VPY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info demo_output
