# sb-meta: `make demo` runs the main job end to end, `make test` runs the test suite
# (`make test-fast`: the unit tests), `make docs` builds the documentation site.
# Each creates .venv when it is missing and reuses it while it is current.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sb-meta-installed
DEMO   ?= demo_out
# real corpora, when a ../shared/data checkout is beside this one (CI exports the same);
# empty (= unset: real-data tests skip) otherwise. Override on the command line.
export SBMETA_AN4_ROOT ?= $(wildcard $(abspath ../shared/data/an4))
export SBMETA_LIBRISPEECH_ROOT ?= $(wildcard $(abspath ../shared/data/librispeech-mini/LibriSpeech))
export SBMETA_SPEECHOCEAN762_ROOT ?= $(wildcard $(abspath ../shared/data/speechocean762-mini))

.PHONY: venv test test-fast docs demo bench bench-quick clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,bench,docs,hf]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# the documentation site (Sphinx + MyST), offline, warnings as errors
docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html

demo: $(STAMP)
	$(BIN)/sb-meta demo --out $(DEMO)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --full

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf $(DEMO) results docs/_build docs/api/generated
