# DiLaDiff toolkit: set-up, tests, the embedded default pipeline and benchmarks.
#   make reproduce   set up, then run the whole pipeline on the embedded default (CPU, offline)
#   make test        set up, then lint and run the test suite
#   make bench       set up, then run the benchmarks (results appended to docs/benchmarks.md)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RECIPE ?= recipes/tiny/default.yaml
# The embedded default and the tests never touch the Hugging Face hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: setup test lint reproduce bench clean

setup: $(VENV)/.installed

# torch first: torch==2.13.0 resolves to the CPU wheel on CPU-only machines and to the
# CUDA build elsewhere; installing it after the rest would pull the CUDA build everywhere.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

lint: setup
	$(BIN)/ruff check diladiff_cli tests scripts
	$(BIN)/ruff format --check diladiff_cli tests scripts

# pytest exits 5 when it collects no test: not a failure of the suite.
test: lint
	$(OFFLINE) $(BIN)/python -m pytest || [ $$? -eq 5 ]

reproduce: setup
	$(OFFLINE) $(BIN)/diladiff prepare $(RECIPE)
	$(OFFLINE) $(BIN)/diladiff train-mdlm $(RECIPE)
	$(OFFLINE) $(BIN)/diladiff sample $(RECIPE) --ndisc 32
	$(OFFLINE) $(BIN)/diladiff sample $(RECIPE) --ndisc 32 --selection confidence \
		--out runs/tiny/samples/mdlm_confidence.jsonl

bench: setup
	$(OFFLINE) $(BIN)/python scripts/bench_mdlm.py --recipe $(RECIPE)

clean:
	rm -rf runs
