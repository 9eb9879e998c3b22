# The DKL toolkit. `make help` lists every target.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
# Every installable folder of the monorepo: the library, the shared training package, the recipes.
PROJECTS := $(sort $(patsubst %/pyproject.toml,%,$(wildcard packages/*/pyproject.toml recipes/*/pyproject.toml)))
EDITABLE := $(foreach p,$(PROJECTS),-e $(p)$(if $(filter packages/dkl-core,$(p)),[autoattack]))
STAMP := $(VENV)/.installed
# The install skips byte-compiling (pip --no-compile: a third of its time goes to compiling the 12,000 files of
# torch and friends); Python then caches the bytecode of the modules it actually imports, the first time. A
# PYTHONDONTWRITEBYTECODE in the environment would forbid that cache, and every process (each launched run, each
# test) would compile torch again, about 6 s each, so the targets here run without it.
unexport PYTHONDONTWRITEBYTECODE

PYTEST_ARGS ?=
ARGS ?=

.PHONY: help install test test-unit lint format bench bench-kd-speed bench-vocab clean

help: ## List every target with a one-line description
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install every package of the repo (editable, pinned); a no-op when nothing changed

$(STAMP): requirements/constraints.txt requirements/dev.txt $(addsuffix /pyproject.toml,$(PROJECTS))
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -c requirements/constraints.txt -r requirements/dev.txt $(EDITABLE)
	@$(PY) -m dkl_train.quiet_launch --write-pth >/dev/null  # .venv/bin/accelerate launch: a run's error without the launcher's traceback
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

bench: install ## Speed/memory ratios side by side into runs/benchmarks/ (ARGS="--only losses"; ARGS=--update-committed: the committed benchmarks/results/)
	$(PY) -m benchmarks $(ARGS)

bench-kd-speed: install ## The paper's training-speed column (CE, KD, DKD, ReviewKD, IKL-KD, GKL-KD, both ImageNet pairs) into runs/benchmarks/ (ARGS=--update-committed: benchmarks/results/)
	$(PY) -m benchmarks --only kd_speed $(ARGS)

bench-vocab: install ## Vocabulary scale: dense vs fused KL/IKL/GKL/DKD beside Liger-Kernel's chunked KL, into runs/benchmarks/vocab_<device>.* (ARGS=--update-committed: benchmarks/results/)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -r requirements/bench-vocab.txt
	$(PY) -m benchmarks --only vocab $(ARGS)

clean: ## Remove caches (keeps .venv, data/ and runs/)
	find . -name __pycache__ -prune -exec rm -rf {} + ; rm -rf .pytest_cache .ruff_cache

# --- reports --------------------------------------------------------------------------------
RUNS ?= runs
.PHONY: report
report: install ## Aggregate every results.json under RUNS=<folder> into RUNS/REPORT.md + plots (mean ± std over the seeds of each setting vs paper; unfinished runs listed apart)
	$(PY) -m tools.report $(RUNS)

# --- datasets and the knowledge-distillation recipe (recipes/kd) ----------------------------
DATASET ?= digits
DATA_DIR ?= data
IMAGENET_DIR ?=
# `accelerate launch` and its options. Empty by default: process count, machine count and precision come
# from your saved `accelerate config` (run it once), else from Accelerate's detection (all visible GPUs, no
# mixed precision). Any flag overrides them, e.g. LAUNCH_ARGS="--multi_gpu --num_processes 8 --mixed_precision bf16".
# A config's `mixed_precision: auto` (the default) follows the launcher; an explicit value there wins.
LAUNCH ?= $(VENV)/bin/accelerate launch
LAUNCH_ARGS ?=
# Runs the launch in a process group of its own: SIGINT (Ctrl-C), SIGTERM (what `timeout`, docker, CI and schedulers
# send to make's process group; make passes it on to its child) and SIGUSR1 go to the training processes once,
# and the wrapper returns only after they have saved their checkpoint, with their exit status. A user error is
# the run's one line, without accelerate's traceback. The seed loops of reproduce-* trap SIGTERM (a handler, not
# an ignored signal, so the launch still gets it) so that their shell, too, waits for the launch.
LAST_ERROR := $(PY) -m tools.last_error
KD_CONFIG := $(or $(CONFIG),recipes/kd/configs/cifar100_resnet32x4_resnet8x4_ikl.yaml)
KD_SEEDS := $(or $(SEEDS),0 1 2)
KD_RUNS := runs/kd/$(basename $(notdir $(KD_CONFIG)))
.PHONY: data train-kd reproduce-kd

data: install ## Prepare a dataset once under DATA_DIR=data: DATASET=digits|cifar10|cifar100|imagenet (IMAGENET_DIR=... for imagenet)
	$(PY) -m dkl_train.data prepare --dataset $(DATASET) --data-dir $(DATA_DIR) $(if $(IMAGENET_DIR),--imagenet-dir $(IMAGENET_DIR))

train-kd: install ## One KD run: CONFIG=recipes/kd/configs/<file>.yaml ARGS="key=value ..." (LAUNCH_ARGS for accelerate launch)
	$(LAST_ERROR) $(LAUNCH) $(LAUNCH_ARGS) recipes/kd/train.py --config $(KD_CONFIG) $(ARGS)

reproduce-kd: install ## Train + eval a KD config over seeds, then report mean ± std vs the paper: CONFIG=... SEEDS="0 1 2" (default resnet32x4 -> resnet8x4 IKL)
	@$(PY) recipes/kd/train.py --check --config $(KD_CONFIG) $(ARGS)
	@trap : TERM; for seed in $(KD_SEEDS); do \
	  $(LAST_ERROR) $(LAUNCH) $(LAUNCH_ARGS) recipes/kd/train.py --config $(KD_CONFIG) seed=$$seed output_dir=$(KD_RUNS)/seed$$seed resume=true $(ARGS) || exit $$?; \
	  $(LAST_ERROR) $(LAUNCH) $(LAUNCH_ARGS) recipes/kd/eval.py --config $(KD_CONFIG) seed=$$seed output_dir=$(KD_RUNS)/seed$$seed $(ARGS) || exit $$?; \
	done
	$(PY) -m tools.report $(KD_RUNS)

# --- the semi-supervised recipe (recipes/ssl) --------------------------------------------------
SSL_CONFIG := $(or $(CONFIG),recipes/ssl/configs/cifar100_200_fixmatch_ikl.yaml)
SSL_SEEDS := $(or $(SEEDS),0 1 2)
SSL_RUNS := runs/ssl/$(basename $(notdir $(SSL_CONFIG)))
.PHONY: train-ssl reproduce-ssl

train-ssl: install ## One SSL run: CONFIG=recipes/ssl/configs/<file>.yaml ARGS="key=value ..." (LAUNCH_ARGS for accelerate launch)
	$(LAST_ERROR) $(LAUNCH) $(LAUNCH_ARGS) recipes/ssl/train.py --config $(SSL_CONFIG) $(ARGS)

reproduce-ssl: install ## Train an SSL config over seeds (resumable), then report mean ± std vs the paper: CONFIG=... SEEDS="0 1 2" (default FixMatch-IKL)
	@trap : TERM; for seed in $(SSL_SEEDS); do \
	  $(LAST_ERROR) $(LAUNCH) $(LAUNCH_ARGS) recipes/ssl/train.py --config $(SSL_CONFIG) seed=$$seed output_dir=$(SSL_RUNS)/seed$$seed resume=true $(ARGS) || exit $$?; \
	done
	$(PY) -m tools.report $(SSL_RUNS)

# --- the adversarial-training recipe (recipes/adv) ---------------------------------------------
ADV_CONFIG := $(or $(CONFIG),recipes/adv/configs/cifar10_wrn34_ikl.yaml)
ADV_SEEDS := $(or $(SEEDS),0)
ADV_RUNS := runs/adv/$(basename $(notdir $(ADV_CONFIG)))
# eval-adv: a run folder (RUN=..., default the first seed of CONFIG) or an eval-only config (configs/eval_*.yaml).
ADV_EVAL_SOURCE = $(if $(findstring /eval_,$(ADV_CONFIG)),--config $(ADV_CONFIG),run_dir=$(or $(RUN),$(ADV_RUNS)/seed$(firstword $(ADV_SEEDS))))
EVAL_ARGS ?=
.PHONY: train-adv eval-adv reproduce-adv

train-adv: install ## One adversarial-training run: CONFIG=recipes/adv/configs/<file>.yaml ARGS="key=value ..." (LAUNCH_ARGS for accelerate launch)
	$(LAST_ERROR) $(LAUNCH) $(LAUNCH_ARGS) recipes/adv/train.py --config $(ADV_CONFIG) $(ARGS)

eval-adv: install ## AutoAttack into results.json: RUN=<run folder> or CONFIG=recipes/adv/configs/eval_<row>.yaml ARGS="checkpoint=PATH" (resumable; LAUNCH_ARGS="--num_processes N" shards it)
	$(LAST_ERROR) $(LAUNCH) $(LAUNCH_ARGS) recipes/adv/eval.py $(ADV_EVAL_SOURCE) $(ARGS)

reproduce-adv: install ## Train + AutoAttack an adv config over seeds, then report: CONFIG=... SEEDS="0" (default CIFAR-10 WRN-34-10 IKL-AT) ARGS= (train) EVAL_ARGS= (eval)
	@trap : TERM; for seed in $(ADV_SEEDS); do \
	  $(LAST_ERROR) $(LAUNCH) $(LAUNCH_ARGS) recipes/adv/train.py --config $(ADV_CONFIG) seed=$$seed output_dir=$(ADV_RUNS)/seed$$seed resume=true $(ARGS) || exit $$?; \
	  $(LAST_ERROR) $(LAUNCH) $(LAUNCH_ARGS) recipes/adv/eval.py run_dir=$(ADV_RUNS)/seed$$seed $(EVAL_ARGS) || exit $$?; \
	done
	$(PY) -m tools.report $(ADV_RUNS)

# --- the demo: every recipe on digits, on this CPU ---------------------------------------------------
# Ten short runs -- KD: teacher, student alone, KD and IKL students; adversarial: TRADES and IKL-AT, each then
# AutoAttacked; SSL: FixMatch and FixMatch-IKL -- two at a time (one per core), then the report and one table,
# compared with the README's sample.
DEMO_RUNS ?= runs/demo
# Extra overrides per recipe; the test suite runs the demo with one epoch per stage this way:
# DEMO_KD_ARGS="epochs=1" ... Any of them (or ARGS/EVAL_ARGS) changes the runs, so the
# table is then not compared with the README's.
DEMO_KD_ARGS ?=
DEMO_SSL_ARGS ?=
DEMO_ADV_ARGS ?=
DEMO_EVAL_ARGS ?=
# The demo pins its own launch, whatever LAUNCH_ARGS or a saved `accelerate config` say: one CPU process
# (--cpu also stops accelerate from reading its config file) with one thread (two OpenMP threads per run
# thrash on two shared cores), fp32, no dynamo; so its table is the same on every run of a given machine.
# accelerate-launch is `accelerate launch` without the imports of the CLI's other commands (~3 s per run).
DEMO_LAUNCH := $(VENV)/bin/accelerate-launch --cpu --num_machines 1 --num_processes 1 \
  --num_cpu_threads_per_process 1 --mixed_precision no --dynamo_backend no
DEMO_OVERRIDDEN = $(strip $(foreach v,DEMO_KD_ARGS DEMO_SSL_ARGS DEMO_ADV_ARGS DEMO_EVAL_ARGS ARGS EVAL_ARGS,$(if $(strip $($(v))),$(v))))
DEMO_LOGS = $(DEMO_RUNS)/logs
DEMO_KD_TEACHER := $(DEMO_RUNS)/kd/teacher_resnet14/model.pth
.PHONY: demo demo-kd demo-ssl demo-adv demo-table demo-data
.PHONY: demo-kd-teacher demo-kd-student demo-kd-kd demo-kd-ikl demo-ssl-fixmatch demo-ssl-fixmatch_ikl
.PHONY: demo-adv-trades demo-adv-ikl demo-aa-trades demo-aa-ikl

# $(call demo_run,RECIPE/NAME,FOLDER_TO_CLEAR,COMMAND[,RUN_FOLDER]): one run of the demo. Its output goes to
# $(DEMO_LOGS)/RECIPE_NAME.log (two runs share the terminal); the terminal gets one line when it starts and one,
# with its figures, when it ends, or the end of the log when it fails.
define demo_run
@mkdir -p $(DEMO_LOGS); $(if $(2),rm -rf $(2);) log=$(DEMO_LOGS)/$(subst /,_,$(1)).log; start=$$(date +%s); \
echo "  start $(1)  (log: $$log)"; \
if ( set -x; $(3) ) > $$log 2>&1; then \
  echo "  done  $(1) in $$(( $$(date +%s) - start )) s: $$($(PY) -m tools.demo --summary $(or $(2),$(4)))"; \
else tail -n 30 $$log; echo "FAILED $(1): the whole log is $$log"; exit 1; fi
endef
# $(call demo_kd,RUN,CONFIG_SUFFIX,EXTRA) and the same for the other recipes: one training run of the demo.
demo_kd = $(call demo_run,kd/$(1),$(DEMO_RUNS)/kd/$(1),$(DEMO_LAUNCH) recipes/kd/train.py \
  --config recipes/kd/configs/digits_$(2).yaml data_dir=$(DATA_DIR) output_dir=$(DEMO_RUNS)/kd/$(1) $(3) $(DEMO_KD_ARGS) $(ARGS))
demo_ssl = $(call demo_run,ssl/$(1),$(DEMO_RUNS)/ssl/$(1),$(DEMO_LAUNCH) recipes/ssl/train.py \
  --config recipes/ssl/configs/digits_$(1).yaml data_dir=$(DATA_DIR) output_dir=$(DEMO_RUNS)/ssl/$(1) $(DEMO_SSL_ARGS) $(ARGS))
demo_adv = $(call demo_run,adv/$(1),$(DEMO_RUNS)/adv/$(1),$(DEMO_LAUNCH) recipes/adv/train.py \
  --config recipes/adv/configs/digits_$(1).yaml data_dir=$(DATA_DIR) output_dir=$(DEMO_RUNS)/adv/$(1) $(DEMO_ADV_ARGS) $(ARGS))
# AutoAttack (standard) on the first DEMO_AA_IMAGES test images, on the raw last-epoch weights: the ones final.top1
# describes (a checkpoint average over so few epochs still lags behind them).
DEMO_AA_IMAGES := 100
demo_aa = $(call demo_run,adv/$(1)_autoattack,,$(DEMO_LAUNCH) recipes/adv/eval.py run_dir=$(DEMO_RUNS)/adv/$(1) \
  data_dir=$(DATA_DIR) subset=$(DEMO_AA_IMAGES) batch_size=$(DEMO_AA_IMAGES) 'weights=[raw]' $(DEMO_EVAL_ARGS) $(EVAL_ARGS),$(DEMO_RUNS)/adv/$(1))

demo-data: install
	@test -f $(DATA_DIR)/digits/dataset_dict.json || \
	  HF_DATASETS_DISABLE_PROGRESS_BARS=1 $(PY) -m dkl_train.data prepare --dataset digits --data-dir $(DATA_DIR)

demo-kd-teacher: demo-data
	$(call demo_kd,teacher_resnet14,teacher_resnet14_ce)
demo-kd-student: demo-data
	$(call demo_kd,student_resnet8_ce,student_resnet8_ce)
demo-kd-kd: demo-kd-teacher
	$(call demo_kd,resnet14_resnet8_kd,resnet14_resnet8_kd,teacher_checkpoint=$(DEMO_KD_TEACHER))
demo-kd-ikl: demo-kd-teacher
	$(call demo_kd,resnet14_resnet8_ikl,resnet14_resnet8_ikl,teacher_checkpoint=$(DEMO_KD_TEACHER))
demo-ssl-fixmatch demo-ssl-fixmatch_ikl: demo-ssl-%: demo-data
	$(call demo_ssl,$*)
demo-adv-trades demo-adv-ikl: demo-adv-%: demo-data
	$(call demo_adv,$*)
demo-aa-trades demo-aa-ikl: demo-aa-%: demo-adv-%
	$(call demo_aa,$*)

demo-kd: demo-kd-student demo-kd-kd demo-kd-ikl ## KD part of the demo on digits: teacher, student alone, KD and IKL students
demo-ssl: demo-ssl-fixmatch demo-ssl-fixmatch_ikl ## SSL part of the demo on digits: FixMatch vs FixMatch-IKL, 5 labels per class
demo-adv: demo-aa-trades demo-aa-ikl ## Adversarial part of the demo on digits: TRADES vs IKL-AT, each AutoAttacked

# `make demo` runs the ten runs in two lanes, one per core, of about equal length (measured here: 182 s and
# 174 s), so that neither core idles at the end (make -j2 alone does not start the longest chains first):
#   lane 1: IKL-AT, its AutoAttack, FixMatch, the KD student, the student alone;
#   lane 2: the teacher, FixMatch-IKL, TRADES, its AutoAttack, the IKL student.
# The order comes from order-only prerequisites set only inside `make demo` (DEMO_LANES=1), so `make demo-ssl`
# and the like still run just their own runs.
ifdef DEMO_LANES
demo-aa-ikl: | demo-data
demo-ssl-fixmatch: | demo-aa-ikl
demo-kd-kd: | demo-ssl-fixmatch
demo-kd-student: | demo-kd-kd
demo-ssl-fixmatch_ikl: | demo-kd-teacher
demo-adv-trades: | demo-ssl-fixmatch_ikl
demo-kd-ikl: | demo-aa-trades
endif
demo: install ## Every recipe on digits on this CPU, two runs at a time (about 3 minutes on 2 cores), then one table
	@rm -rf $(DEMO_RUNS)/kd $(DEMO_RUNS)/ssl $(DEMO_RUNS)/adv $(DEMO_LOGS)
	@echo "Ten short runs on the digits dataset, two at a time; each one's output is in $(DEMO_LOGS)/."
	@$(MAKE) --no-print-directory -j2 DEMO_LANES=1 demo-kd-student demo-kd-ikl
	@$(PY) -m tools.report $(DEMO_RUNS) > $(DEMO_LOGS)/report.log || { cat $(DEMO_LOGS)/report.log; exit 1; }
	@echo "Report and plots: $(DEMO_RUNS)/REPORT.md"
	@$(PY) -m tools.demo $(DEMO_RUNS) --readme README.md $(if $(DEMO_OVERRIDDEN),--overridden $(DEMO_OVERRIDDEN))

demo-table: ## Print the table of the demo runs (reads runs/demo/**/results.json, or DEMO_RUNS=...)
	@$(PY) -m tools.demo $(DEMO_RUNS)

# --- whole paper tables: every config of one table over seeds (tools/sweep.py) ----------------
# A table is every training config of recipes/<task>/configs with one `dataset` (`make sweep-list` shows them).
# Finished runs (results.json with the headline statistic) are skipped, interrupted ones resumed; the run
# folders are those of reproduce-*: $(RUNS)/<task>/<config>/seed<N>. The table goes to $(RUNS)/<task>/TABLE_<table>.md.
# SUBMIT=slurm writes a SLURM array script (one task per config x seed, requeued when pre-empted or out of
# time) and prints its sbatch command; SUBMIT=none only rewrites the table. SBATCH_ARGS adds #SBATCH options.
TABLE ?=
SUBMIT ?= local
SBATCH_ARGS ?=
SWEEP = $(PY) -m tools.sweep
SWEEP_OPTS = --table "$(TABLE)" --runs "$(RUNS)" --submit "$(SUBMIT)" --launch "$(LAUNCH) $(LAUNCH_ARGS)" \
  --python "$(PY)" --args "$(ARGS)" --sbatch "$(SBATCH_ARGS)"
.PHONY: sweep-kd sweep-adv sweep-ssl sweep-list

sweep-kd: install ## A whole KD table over seeds, then teacher -> student x method: TABLE=cifar100|imagenet|digits SEEDS="0 1 2" [SUBMIT=slurm|none]
	$(SWEEP) kd $(SWEEP_OPTS) --seeds "$(KD_SEEDS)"

sweep-adv: install ## A whole adversarial table (train + AutoAttack), clean / robust per method: TABLE=cifar10|cifar100|digits SEEDS="0" [SUBMIT=slurm|none]
	$(SWEEP) adv $(SWEEP_OPTS) --seeds "$(ADV_SEEDS)" --eval-args "$(EVAL_ARGS)"

sweep-ssl: install ## A whole SSL table over seeds, setting x method: TABLE=cifar100|digits SEEDS="0 1 2" [SUBMIT=slurm|none]
	$(SWEEP) ssl $(SWEEP_OPTS) --seeds "$(SSL_SEEDS)"

sweep-list: install ## List the tables of every recipe (TABLE=...) and the configs in each
	@$(SWEEP) --list
