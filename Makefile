# fastlt: `make demo` and `make test` do all set-up themselves (venv, pinned packages).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fastlt-installed
DEMO   ?= demo

.PHONY: install test test-quick docs demo bench reproduce-cifar100 reproduce-cifar10 reproduce-imagenet100 reproduce-digits

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	bash tools/install_ffcv.sh $(BIN)/python
	touch $(STAMP)

install: $(STAMP)

# The suite in TEST_WORKERS processes (pytest-xdist), the cores divided between them (tests/conftest.py);
# TEST_WORKERS=0 runs it in this process. Tests of uneven length: idle workers take queued ones (worksteal).
TEST_WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest tests -q -rs -n $(TEST_WORKERS) $(if $(filter 0,$(TEST_WORKERS)),,--dist worksteal)

test: $(STAMP)
	$(PYTEST)

# The fast part of the suite while developing (no whole trainings, compiles or started processes);
# CI runs `make test`.
test-quick: $(STAMP)
	$(PYTEST) -m "not slow"

# The manual (docs/) as a site in site/, in strict mode: a broken link or anchor fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# convert digits -> SimCLR on digits-LT -> linear probe + kNN vs a random-init backbone.
demo: $(STAMP)
	$(BIN)/fastlt convert digits --out $(DEMO)/digits --overwrite
	run=$$($(BIN)/fastlt pretrain digits_lt/simclr \
	      --set data.store=$(DEMO)/digits --set train.out_dir=$(DEMO)/runs | tail -n 1) && \
	$(BIN)/fastlt linear-eval $$run --random-init

# Views per second against per-image PIL, kornia and DALI, and where a step's time goes (JSON beside each
# table). kornia and DALI come with the bench extra; a contender that cannot be installed is reported skipped.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "fastlt[bench] not installed: kornia / DALI will be skipped"
	$(BIN)/fastlt bench views --out bench-views.json --overwrite
	$(BIN)/fastlt bench train --out bench-train.json --overwrite

# The published tables (fastlt/reproduce.py): CIFAR=path/to/tarball (else it is downloaded),
# SPLITS=1,2,3,4,5 for mean and std over the published splits, EPOCHS=N for a short version,
# SET="section.key=value ..." to override recipe values in every run. The runs are a sweep (docs/sweeps.md):
# DEVICES=auto (default: every visible GPU, one run each; the CPU without one) or cuda:0,cuda:1, PER_DEVICE=K runs
# at once per GPU, JOBS=N runs at once on the CPU, SLURM="partition=P,gpus=1,time=600" each run a Slurm job.
# Stopped and run again, each target continues where it stopped.
DATA    ?= data
RESULTS ?= results
SPLITS  ?= 1
REPRODUCE = $(BIN)/fastlt reproduce --out $(RESULTS) $(if $(EPOCHS),--epochs $(EPOCHS)) $(foreach s,$(SET),--set $(s)) \
            $(if $(DEVICES),--devices $(DEVICES)) $(if $(PER_DEVICE),--per-device $(PER_DEVICE)) \
            $(if $(JOBS),--jobs $(JOBS)) $(if $(SLURM),--slurm $(SLURM))

$(DATA)/%/meta.json: | $(STAMP)
	$(BIN)/fastlt convert $* $(if $(CIFAR),--source $(CIFAR),--download) --out $(DATA)/$*

reproduce-cifar100: $(STAMP) $(DATA)/cifar100/meta.json
	$(REPRODUCE) cifar100 --store $(DATA)/cifar100 --splits $(SPLITS)

reproduce-cifar10: $(STAMP) $(DATA)/cifar10/meta.json
	$(REPRODUCE) cifar10 --store $(DATA)/cifar10 --splits $(SPLITS)

# TS's ImageNet-100-LT row: IMAGENET=path/to/ILSVRC2012 (with train/ and val/). The store is built once from
# the published lists (LISTS="lt=FILE val=FILE fewshot=FILE test=FILE" replaces them: TS's FS SVM fits the
# fewshot list; SIZE=N the stored side, 256).
$(DATA)/imagenet100-lt/meta.json: | $(STAMP)
	@test -n "$(IMAGENET)" || { echo "reproduce-imagenet100: set IMAGENET=path/to/ILSVRC2012 (with train/ and val/)" >&2; exit 2; }
	$(BIN)/fastlt convert imagenet100-lt --root $(IMAGENET) $(foreach list,$(LISTS),--list $(list)) \
	    $(if $(SIZE),--size $(SIZE)) --out $(DATA)/imagenet100-lt

reproduce-imagenet100: $(STAMP) $(DATA)/imagenet100-lt/meta.json
	$(REPRODUCE) imagenet100 --store $(DATA)/imagenet100-lt

# The same pipeline on the built-in digits, short enough for two CPU cores.
reproduce-digits: $(STAMP)
	test -f $(DATA)/digits/meta.json || $(BIN)/fastlt convert digits --out $(DATA)/digits
	$(REPRODUCE) digits --store $(DATA)/digits
