# sb-meta: `make demo` runs the main job end to end, `make test` runs the test suite.
# Both create .venv when it is missing and reuse it while it is current.
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

.PHONY: venv test demo bench bench-quick clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,bench,hf]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/sb-meta demo --out $(DEMO)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --full

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf $(DEMO) results
