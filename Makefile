# Every target installs what it needs into .venv first (a fresh machine needs only python3 >= 3.10).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast lint bench demo clean

# Two stamps: the runtime alone (what `make demo` needs), and runtime + test tools (deepspeed, lm_eval,
# ruff, pytest: what tests, lint and benchmarks need). A venv with the full set serves the demo as is.
# Both also depend on the start-up hook file, which `pip install -e` copies into site-packages.
$(BIN)/.installed: pyproject.toml llamafactory_dids.pth
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

$(BIN)/.installed-runtime: pyproject.toml llamafactory_dids.pth
	if [ $(BIN)/.installed -nt pyproject.toml ] && [ $(BIN)/.installed -nt llamafactory_dids.pth ]; then touch $@; else \
		$(PYTHON) -m venv $(VENV) && \
		$(BIN)/python -m pip install --upgrade pip && \
		$(BIN)/python -m pip install -e . && \
		touch $@; fi

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check llamafactory_dids tests benchmarks
	$(BIN)/ruff format --check llamafactory_dids tests benchmarks

bench: install  # every benchmark, one table of figures and targets; `make bench BENCH_ARGS=--quick`
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

demo: $(BIN)/.installed-runtime
	$(BIN)/llamafactory-dids demo

clean:
	rm -rf dids_demo .pytest_cache .ruff_cache
