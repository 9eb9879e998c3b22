# The DKL toolkit. `make help` lists every target.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
# Every installable folder of the monorepo: the library, the shared training package, the recipes.
PROJECTS := $(sort $(patsubst %/pyproject.toml,%,$(wildcard packages/*/pyproject.toml recipes/*/pyproject.toml)))
EDITABLE := $(foreach p,$(PROJECTS),-e $(p)$(if $(filter packages/dkl-core,$(p)),[autoattack]))
STAMP := $(VENV)/.installed

PYTEST_ARGS ?=
ARGS ?=

.PHONY: help install test test-unit lint format bench clean

help: ## List every target with a one-line description
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install every package of the repo (editable, pinned); a no-op when nothing changed

$(STAMP): requirements/constraints.txt requirements/dev.txt $(addsuffix /pyproject.toml,$(PROJECTS))
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -r requirements/dev.txt $(EDITABLE)
	@touch $@

test: install ## Run the whole test suite (unit, recipe smoke, distributed, resume)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## Run only the fast unit tests (seconds)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install ## ruff check + format check over the whole repo
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install ## Speed/memory ratios side by side; writes benchmarks/results/*.json and *.md
	$(PY) -m benchmarks $(ARGS)

clean: ## Remove caches (keeps .venv, data/ and runs/)
	find . -name __pycache__ -prune -exec rm -rf {} + ; rm -rf .pytest_cache .ruff_cache

# --- reports --------------------------------------------------------------------------------
RUNS ?= runs
.PHONY: report
report: install ## Aggregate every results.json under RUNS=<folder> into RUNS/REPORT.md + plots (mean ± std over seeds vs paper)
	$(PY) -m dkl_train.report $(RUNS)

# --- datasets and the knowledge-distillation recipe (recipes/kd) ----------------------------
DATASET ?= digits
DATA_DIR ?= data
IMAGENET_DIR ?=
# `accelerate launch` and its options, e.g. LAUNCH_ARGS="--multi_gpu --num_processes 8 --num_machines 1".
# The precision comes from the config (mixed_precision: bf16), which overrides the launcher's --mixed_precision.
LAUNCH ?= $(VENV)/bin/accelerate launch
LAUNCH_ARGS ?= --num_machines 1 --num_processes 1 --dynamo_backend no --mixed_precision no
KD_CONFIG := $(or $(CONFIG),recipes/kd/configs/cifar100_resnet32x4_resnet8x4_ikl.yaml)
KD_SEEDS := $(or $(SEEDS),0 1 2)
KD_RUNS := runs/kd/$(basename $(notdir $(KD_CONFIG)))
DEMO_KD := recipes/kd/configs
.PHONY: data train-kd reproduce-kd demo demo-kd demo-table

data: install ## Prepare a dataset once under DATA_DIR=data: DATASET=digits|cifar10|cifar100|imagenet (IMAGENET_DIR=... for imagenet)
	$(PY) -m dkl_train.data prepare --dataset $(DATASET) --data-dir $(DATA_DIR) $(if $(IMAGENET_DIR),--imagenet-dir $(IMAGENET_DIR))

train-kd: install ## One KD run: CONFIG=recipes/kd/configs/<file>.yaml ARGS="key=value ..." (LAUNCH_ARGS for accelerate launch)
	$(LAUNCH) $(LAUNCH_ARGS) recipes/kd/train.py --config $(KD_CONFIG) $(ARGS)

reproduce-kd: install ## Train + eval a KD config over seeds, then report mean ± std vs the paper: CONFIG=... SEEDS="0 1 2" (default resnet32x4 -> resnet8x4 IKL)
	@$(PY) recipes/kd/train.py --check --config $(KD_CONFIG) $(ARGS)
	@for seed in $(KD_SEEDS); do \
	  $(LAUNCH) $(LAUNCH_ARGS) recipes/kd/train.py --config $(KD_CONFIG) seed=$$seed output_dir=$(KD_RUNS)/seed$$seed resume=true $(ARGS) || exit 1; \
	  $(LAUNCH) $(LAUNCH_ARGS) recipes/kd/eval.py --config $(KD_CONFIG) seed=$$seed output_dir=$(KD_RUNS)/seed$$seed $(ARGS) || exit 1; \
	done
	$(PY) -m dkl_train.report $(KD_RUNS)

demo-kd: install ## KD part of the demo on digits: teacher (ce), student alone, KD and IKL students (CPU, minutes)
	@test -f $(DATA_DIR)/digits/dataset_dict.json || $(PY) -m dkl_train.data prepare --dataset digits --data-dir $(DATA_DIR)
	rm -rf runs/demo/kd
	$(LAUNCH) --cpu $(LAUNCH_ARGS) recipes/kd/train.py --config $(DEMO_KD)/digits_teacher_resnet14_ce.yaml data_dir=$(DATA_DIR) $(ARGS)
	$(LAUNCH) --cpu $(LAUNCH_ARGS) recipes/kd/train.py --config $(DEMO_KD)/digits_student_resnet8_ce.yaml data_dir=$(DATA_DIR) $(ARGS)
	$(LAUNCH) --cpu $(LAUNCH_ARGS) recipes/kd/train.py --config $(DEMO_KD)/digits_resnet14_resnet8_kd.yaml data_dir=$(DATA_DIR) $(ARGS)
	$(LAUNCH) --cpu $(LAUNCH_ARGS) recipes/kd/train.py --config $(DEMO_KD)/digits_resnet14_resnet8_ikl.yaml data_dir=$(DATA_DIR) $(ARGS)

# --- the semi-supervised recipe (recipes/ssl) --------------------------------------------------
SSL_CONFIG := $(or $(CONFIG),recipes/ssl/configs/cifar100_200_fixmatch_ikl.yaml)
SSL_SEEDS := $(or $(SEEDS),0 1 2)
SSL_RUNS := runs/ssl/$(basename $(notdir $(SSL_CONFIG)))
DEMO_SSL := recipes/ssl/configs
.PHONY: train-ssl reproduce-ssl demo-ssl

train-ssl: install ## One SSL run: CONFIG=recipes/ssl/configs/<file>.yaml ARGS="key=value ..." (LAUNCH_ARGS for accelerate launch)
	$(LAUNCH) $(LAUNCH_ARGS) recipes/ssl/train.py --config $(SSL_CONFIG) $(ARGS)

reproduce-ssl: install ## Train an SSL config over seeds (resumable), then report mean ± std vs the paper: CONFIG=... SEEDS="0 1 2" (default FixMatch-IKL)
	@for seed in $(SSL_SEEDS); do \
	  $(LAUNCH) $(LAUNCH_ARGS) recipes/ssl/train.py --config $(SSL_CONFIG) seed=$$seed output_dir=$(SSL_RUNS)/seed$$seed resume=true $(ARGS) || exit 1; \
	done
	$(PY) -m dkl_train.report $(SSL_RUNS)

demo-ssl: install ## SSL part of the demo on digits: FixMatch vs FixMatch-IKL, 5 labels per class (CPU, minutes)
	@# One thread per process: on a shared 2-core machine two OpenMP threads thrash (about 10x slower here).
	@test -f $(DATA_DIR)/digits/dataset_dict.json || $(PY) -m dkl_train.data prepare --dataset digits --data-dir $(DATA_DIR)
	rm -rf runs/demo/ssl
	$(LAUNCH) --cpu --num_cpu_threads_per_process 1 $(LAUNCH_ARGS) recipes/ssl/train.py --config $(DEMO_SSL)/digits_fixmatch.yaml data_dir=$(DATA_DIR) $(ARGS)
	$(LAUNCH) --cpu --num_cpu_threads_per_process 1 $(LAUNCH_ARGS) recipes/ssl/train.py --config $(DEMO_SSL)/digits_fixmatch_ikl.yaml data_dir=$(DATA_DIR) $(ARGS)

# --- the adversarial-training recipe (recipes/adv) ---------------------------------------------
ADV_CONFIG := $(or $(CONFIG),recipes/adv/configs/cifar10_wrn34_ikl.yaml)
ADV_SEEDS := $(or $(SEEDS),0)
ADV_RUNS := runs/adv/$(basename $(notdir $(ADV_CONFIG)))
# eval-adv: a run folder (RUN=..., default the first seed of CONFIG) or an eval-only config (configs/eval_*.yaml).
ADV_EVAL_SOURCE = $(if $(findstring /eval_,$(ADV_CONFIG)),--config $(ADV_CONFIG),run_dir=$(or $(RUN),$(ADV_RUNS)/seed$(firstword $(ADV_SEEDS))))
EVAL_ARGS ?=
DEMO_ADV := recipes/adv/configs
.PHONY: train-adv eval-adv reproduce-adv demo-adv

train-adv: install ## One adversarial-training run: CONFIG=recipes/adv/configs/<file>.yaml ARGS="key=value ..." (LAUNCH_ARGS for accelerate launch)
	$(LAUNCH) $(LAUNCH_ARGS) recipes/adv/train.py --config $(ADV_CONFIG) $(ARGS)

eval-adv: install ## AutoAttack into results.json: RUN=<run folder> or CONFIG=recipes/adv/configs/eval_<row>.yaml ARGS="checkpoint=PATH" (resumable; LAUNCH_ARGS="--num_processes N" shards it)
	$(LAUNCH) $(LAUNCH_ARGS) recipes/adv/eval.py $(ADV_EVAL_SOURCE) $(ARGS)

reproduce-adv: install ## Train + AutoAttack an adv config over seeds, then report: CONFIG=... SEEDS="0" (default CIFAR-10 WRN-34-10 IKL-AT) ARGS= (train) EVAL_ARGS= (eval)
	@for seed in $(ADV_SEEDS); do \
	  $(LAUNCH) $(LAUNCH_ARGS) recipes/adv/train.py --config $(ADV_CONFIG) seed=$$seed output_dir=$(ADV_RUNS)/seed$$seed resume=true $(ARGS) || exit 1; \
	  $(LAUNCH) $(LAUNCH_ARGS) recipes/adv/eval.py run_dir=$(ADV_RUNS)/seed$$seed $(EVAL_ARGS) || exit 1; \
	done
	$(PY) -m dkl_train.report $(ADV_RUNS)

demo-adv: install ## Adversarial part of the demo on digits: TRADES vs IKL-AT, each then AutoAttacked on 200 test images (CPU, minutes)
	@# One thread per process: on a shared 2-core machine two OpenMP threads thrash. AutoAttack runs on the raw
	@# last-epoch weights, the ones final.top1 describes (a 10-epoch checkpoint average still lags behind them).
	@test -f $(DATA_DIR)/digits/dataset_dict.json || $(PY) -m dkl_train.data prepare --dataset digits --data-dir $(DATA_DIR)
	rm -rf runs/demo/adv
	@for method in trades ikl; do \
	  $(LAUNCH) --cpu --num_cpu_threads_per_process 1 $(LAUNCH_ARGS) recipes/adv/train.py --config $(DEMO_ADV)/digits_$$method.yaml data_dir=$(DATA_DIR) $(ARGS) || exit 1; \
	  $(LAUNCH) --cpu --num_cpu_threads_per_process 1 $(LAUNCH_ARGS) recipes/adv/eval.py run_dir=runs/demo/adv/$$method data_dir=$(DATA_DIR) subset=200 batch_size=200 'weights=[raw]' $(EVAL_ARGS) || exit 1; \
	done

demo: demo-kd demo-ssl demo-adv ## Run every recipe on digits on this CPU and print the results side by side
	@$(PY) -m dkl_train.report runs/demo
	@$(MAKE) --no-print-directory demo-table

demo-table: ## Print the table of the demo runs (reads runs/demo/**/results.json)
	@$(PY) -m dkl_train.demo runs/demo
