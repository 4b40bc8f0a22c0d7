# DiLaDiff toolkit: set-up, tests, the embedded default pipeline and benchmarks.
#   make reproduce   set up, then run the whole pipeline, every experiment, and write the report
#                    (default: the oracle corpus, exactly scored, CPU, offline;
#                    CORPUS=shakespeare: the tiny recipe on Shakespeare; SCALE=paper NPROC=8: CUDA;
#                    SEED=1: a second seed of the whole pipeline, in a fresh clone)
#   make test        set up (with the test tools), then lint and run the test suite
#   make bench       set up (with the dev extra: GPT-2's tokenizer), then run the benchmarks
#                    (results appended to docs/benchmarks.md)
#   make gpu-carry   what scripts/gpu_oracle.sh needs on a lent GPU machine without network
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RECIPE ?= recipes/tiny/default.yaml
CORPUS ?= oracle
# The CPU scale follows the corpus: oracle (recipes/oracle) or shakespeare (recipes/tiny).
SCALE  ?= $(if $(filter shakespeare,$(CORPUS)),tiny,$(if $(filter oracle,$(CORPUS)),oracle,$(error CORPUS must be oracle or shakespeare, not $(CORPUS))))
NPROC  ?= 1
SEED   ?= 0
# JOBS=2: independent CPU stages two at a time, each on half the threads (trainings then
# differ from one at a time's; about 6 % faster on 2 cores, results/oracle/jobs2_trial)
JOBS   ?= 1
# The embedded default and the tests never touch the Hugging Face hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: setup test lint reproduce bench gpu-carry clean

# setup: what `make reproduce` needs; the test tools (the dev extra) come with `make test`
setup: $(VENV)/.installed

# torch first: torch==2.13.0 resolves to the CPU wheel on CPU-only machines and to the
# CUDA build elsewhere; installing it after the rest would pull the CUDA build everywhere.
# --no-compile: pip would byte-compile all 15,000 modules it installs, one after another
# (43 of the 75 s of this set-up on 2 cores); Python compiles the few hundred a run imports
# on first use instead, so make lets it write that bytecode (PYTHONDONTWRITEBYTECODE unset).
unexport PYTHONDONTWRITEBYTECODE
PIP := $(BIN)/python -m pip install --quiet --no-compile
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check diladiff_cli tests scripts
	$(BIN)/ruff format --check diladiff_cli tests scripts

# pytest exits 5 when it collects no test: not a failure of the suite. The suite runs on
# every core (pytest-xdist, TEST_WORKERS=auto), one torch thread per worker: on 2 cores
# 252 s of pytest against about 470 s in one process. TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
test: lint
	$(OFFLINE) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) || [ $$? -eq 5 ]

# Every stage skips finished work: after an interruption, run it again. Timings and the
# report land in results/$(SCALE)/ (timings.json, REPORT.md; SEED=N: results/$(SCALE)/pipeline_seedN/).
reproduce: setup
	$(OFFLINE) $(BIN)/python scripts/reproduce.py --scale $(SCALE) --nproc $(NPROC) --seed $(SEED) --jobs $(JOBS)

# Every stage's training throughput and sampling speed on this machine's device, appended
# to docs/benchmarks.md and docs/benchmarks.json. BENCH_ARGS passes options, e.g.
# BENCH_ARGS="--device cuda --compile" or "--random-init" (python scripts/bench.py --help).
BENCH_ARGS ?=
bench: $(VENV)/.installed-dev
	$(OFFLINE) $(BIN)/python scripts/bench.py --recipe $(RECIPE) $(BENCH_ARGS)

# gpu-carry: what scripts/gpu_oracle.sh needs on a lent GPU machine that reaches no network
# and lacks these packages: the shipped MiniLM in fp16 and the wheels (for CARRY_PY, the
# image's Python 3.12), about 47 MB in $(CARRY)/. Then, there: bash scripts/gpu_oracle.sh
CARRY    ?= .devcarry
CARRY_PY ?= 3.12
gpu-carry: setup
	$(BIN)/python scripts/gpu_standins.py minilm-fp16 $(CARRY)/minilm-fp16
	$(BIN)/python -m pip download --quiet --only-binary=:all: --python-version $(CARRY_PY) \
		--platform manylinux2014_x86_64 --no-deps -d $(CARRY)/wheels \
		datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bert-score==0.3.13

clean:
	rm -rf runs
