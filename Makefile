# fastlt: `make demo` and `make test` do all set-up themselves (venv, pinned packages).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fastlt-installed
DEMO   ?= demo

.PHONY: install test demo bench

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

# convert digits -> SimCLR on digits-LT -> linear probe + kNN vs a random-init backbone.
demo: $(STAMP)
	$(BIN)/fastlt convert digits --out $(DEMO)/digits --overwrite
	run=$$($(BIN)/fastlt pretrain digits_lt/simclr \
	      --set data.store=$(DEMO)/digits --set train.out_dir=$(DEMO)/runs | tail -n 1) && \
	$(BIN)/fastlt linear-eval $$run --random-init

# Where a step's time goes, and batched views vs the per-image torchvision pipeline (JSON).
bench: $(STAMP)
	$(BIN)/python tools/bench.py --out bench.json
