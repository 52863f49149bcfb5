# constraints.txt pins every transitive version of the set checked to install together
# (regenerate: .venv/bin/pip freeze --exclude-editable > constraints.txt).
# Two commands on a fresh clone:  `make all` (train, compress, bench on the bundled data)
# and `make test`. Every target depends on `setup`, which installs into .venv once and again
# only when pyproject.toml changes. Full data: `DATA_DIR=../shared/data make all`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
REPORTS ?= reports
PORT ?= 8000
# On the bundled samples `make bench` takes CI's short rounds (--quick): the report has the same
# rows and shape, each latency from thousands of calls; with DATA_DIR the full rounds.
BENCH_FLAGS ?= $(if $(DATA_DIR),,--quick)
# The run's compact summary (benchmarks/record.py); a full-data run's is the one committed.
RECORD_OUT ?= $(if $(DATA_DIR),benchmarks/results,$(REPORTS))
RECORD_STEM ?= $(if $(DATA_DIR),full-data,record)
# Training jobs run at once (each in its own process): the transfer chain and the small models
# overlap on 2 cores.
TRAIN_JOBS ?= 2
# Tasks compressed at once (each in its own process); latencies are measured after, one at a time.
COMPRESS_JOBS ?= 2
export DATA_DIR
export PYTHONDONTWRITEBYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help setup all train train-multiworker compress bench record bench-gpu serve test test-fast ci clean distclean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: DATA_DIR (full datasets; default: bundled samples), ARTIFACTS=$(ARTIFACTS), REPORTS=$(REPORTS), PORT=$(PORT), TRAIN_JOBS=$(TRAIN_JOBS), COMPRESS_JOBS=$(COMPRESS_JOBS)"

setup: $(STAMP) ## create .venv and install everything (idempotent)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

all: train compress bench record ## train, compress and benchmark the served tasks, then summarize

train: setup ## train the served tasks' models (+ a MobileNet fine-tune) into artifacts/
	$(PY) -m trainer train-all --artifacts $(ARTIFACTS) --jobs $(TRAIN_JOBS)

# Two trainer processes on this machine form one MultiWorkerMirroredStrategy cluster (TF_CONFIG
# with loopback ports); worker 0 is the chief and writes fashion_mnist/fashion_mlp-<WORKERS>workers
# into its own artifact root, so that `make compress bench` do not take it for a served model.
WORKERS ?= 2
MULTIWORKER_ARTIFACTS ?= $(ARTIFACTS)-multiworker

train-multiworker: setup ## train fashion_mlp for 1 epoch with WORKERS=2 multi-worker processes
	$(PY) -m trainer.distribute --workers $(WORKERS) --timeout 600 -- train --model fashion_mlp \
		--epochs 1 --variant fashion_mlp-$(WORKERS)workers --artifacts $(MULTIWORKER_ARTIFACTS)

compress: setup ## derive pruned/quantized/factorized variants and select one per task
	$(PY) -m compress run-all --artifacts $(ARTIFACTS) --jobs $(COMPRESS_JOBS)

bench: setup ## measure every variant; writes reports/bench.{json,md}, plots, index.html
	$(PY) -m benchmarks run --artifacts $(ARTIFACTS) --reports $(REPORTS) $(BENCH_FLAGS)

record: setup ## per task and variant: accuracy, MACs, size, latency, training time, served
	$(PY) -m benchmarks record --bench $(REPORTS)/bench.json --artifacts $(ARTIFACTS) \
		--out $(RECORD_OUT) --stem $(RECORD_STEM)

# The GPU host has no package registry and no TensorFlow: bench-gpu does not install, it runs
# whichever python has onnxruntime-gpu there (../shared/gpu/README.md: source .gpu/env.sh).
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))

bench-gpu: ## on a GPU host: TensorRT/CUDA/CPU x batch 1-1024 record into benchmarks/results/
	$(GPU_PYTHON) -m benchmarks gpu --artifacts $(ARTIFACTS) --reports $(REPORTS) --record-dir benchmarks/results

serve: setup ## serve the selected variants over HTTP (PORT=8000)
	$(PY) -m serve --artifacts $(ARTIFACTS) --port $(PORT)

test: setup ## run the test suite (uses ../shared/data for full-data tests when present)
	$(PY) -m pytest -q

ci: ## what CI runs on a clean clone
	./.ci/run

clean: ## remove build outputs (artifacts, reports, caches), keep .venv
	rm -rf $(ARTIFACTS) $(MULTIWORKER_ARTIFACTS) $(REPORTS) model_repository .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean ## also remove .venv
	rm -rf $(VENV) *.egg-info
