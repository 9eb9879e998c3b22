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
# Where the demo writes its runs, and extra overrides per recipe (the test suite runs `make demo` with one
# epoch per stage this way: DEMO_KD_ARGS="epochs=1 warmup_epochs=0" ...).
DEMO_RUNS ?= runs/demo
DEMO_KD_ARGS ?=
DEMO_SSL_ARGS ?=
DEMO_ADV_ARGS ?=
DEMO_EVAL_ARGS ?=
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
	rm -rf $(DEMO_RUNS)/kd
	$(LAUNCH) --cpu $(LAUNCH_ARGS) recipes/kd/train.py --config $(DEMO_KD)/digits_teacher_resnet14_ce.yaml data_dir=$(DATA_DIR) output_dir=$(DEMO_RUNS)/kd/teacher_resnet14 $(DEMO_KD_ARGS) $(ARGS)
	$(LAUNCH) --cpu $(LAUNCH_ARGS) recipes/kd/train.py --config $(DEMO_KD)/digits_student_resnet8_ce.yaml data_dir=$(DATA_DIR) output_dir=$(DEMO_RUNS)/kd/student_resnet8_ce $(DEMO_KD_ARGS) $(ARGS)
	@for method in kd ikl; do \
	  $(LAUNCH) --cpu $(LAUNCH_ARGS) recipes/kd/train.py --config $(DEMO_KD)/digits_resnet14_resnet8_$$method.yaml data_dir=$(DATA_DIR) \
	    output_dir=$(DEMO_RUNS)/kd/resnet14_resnet8_$$method teacher_checkpoint=$(DEMO_RUNS)/kd/teacher_resnet14/model.pth $(DEMO_KD_ARGS) $(ARGS) || exit 1; \
	done

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
	rm -rf $(DEMO_RUNS)/ssl
	@for run in fixmatch fixmatch_ikl; do \
	  $(LAUNCH) --cpu --num_cpu_threads_per_process 1 $(LAUNCH_ARGS) recipes/ssl/train.py --config $(DEMO_SSL)/digits_$$run.yaml \
	    data_dir=$(DATA_DIR) output_dir=$(DEMO_RUNS)/ssl/$$run $(DEMO_SSL_ARGS) $(ARGS) || exit 1; \
	done

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
	rm -rf $(DEMO_RUNS)/adv
	@for method in trades ikl; do \
	  $(LAUNCH) --cpu --num_cpu_threads_per_process 1 $(LAUNCH_ARGS) recipes/adv/train.py --config $(DEMO_ADV)/digits_$$method.yaml \
	    data_dir=$(DATA_DIR) output_dir=$(DEMO_RUNS)/adv/$$method $(DEMO_ADV_ARGS) $(ARGS) || exit 1; \
	  $(LAUNCH) --cpu --num_cpu_threads_per_process 1 $(LAUNCH_ARGS) recipes/adv/eval.py run_dir=$(DEMO_RUNS)/adv/$$method \
	    data_dir=$(DATA_DIR) subset=200 batch_size=200 'weights=[raw]' $(DEMO_EVAL_ARGS) $(EVAL_ARGS) || exit 1; \
	done

# The SSL and adversarial parts use one thread per process, so make runs them side by side on the two cores
# (-j2; about 3 minutes saved). The adversarial part keeps the terminal and its progress bars, SSL's output
# goes to $(DEMO_RUNS)/ssl.log. Both stay make's children, so Ctrl-C stops both and a failure fails the demo.
demo: demo-kd ## Run every recipe on digits on this CPU (about 6 minutes on 2 cores, plus the first install) and print the results side by side
	@mkdir -p $(DEMO_RUNS)
	@echo "SSL runs alongside the adversarial part on the second core; follow it with: tail -f $(DEMO_RUNS)/ssl.log"
	@$(MAKE) --no-print-directory -j2 demo-adv demo-ssl-logged
	@$(PY) -m dkl_train.report $(DEMO_RUNS)
	@$(PY) -m dkl_train.demo $(DEMO_RUNS)

.PHONY: demo-ssl-logged
demo-ssl-logged:
	@$(MAKE) --no-print-directory demo-ssl > $(DEMO_RUNS)/ssl.log 2>&1 || \
	  { tail -c 3000 $(DEMO_RUNS)/ssl.log; echo; echo "demo-ssl failed: see $(DEMO_RUNS)/ssl.log"; exit 1; }
	@echo "SSL part done (log: $(DEMO_RUNS)/ssl.log)"

demo-table: ## Print the table of the demo runs (reads runs/demo/**/results.json, or DEMO_RUNS=...)
	@$(PY) -m dkl_train.demo $(DEMO_RUNS)
