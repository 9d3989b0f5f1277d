# LabHub: the two commands a fresh clone needs are `make run` and `make test`.
SHELL := /bin/bash
# The system Python, so per-user accounts can execute the venv (a pyenv under /root is unreadable to them).
PYTHON ?= $(shell [ -x /usr/bin/python3.11 ] && echo /usr/bin/python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: run test lint deps system clean

run: $(STAMP)  ## run the hub on ./labhub-data (SQLite, local backend); prints how to log in
	$(BIN)/labhub serve

test: $(STAMP) system  ## install everything the tests need, start their services, run them all
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests

deps: $(STAMP)

system:  ## Debian packages and services the tests use (root installs; otherwise it checks)
	bash scripts/system-deps.sh

$(STAMP): pyproject.toml
	bash scripts/python-deps.sh "$(PYTHON)" "$(VENV)"
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache

.PHONY: bench
bench: $(STAMP)  ## benchmarks against JupyterHub + CHP (installs them under benchmarks/); QUICK=1: each figure once
	bash benchmarks/install.sh "$(PYTHON)"
	$(BIN)/python benchmarks/run.py $(if $(QUICK),--quick)
	@if [ "$$(id -u)" = 0 ] && command -v slurmctld >/dev/null; then \
	  echo "LabHub on Slurm: launch -> reachable vs raw sbatch -> RUNNING"; \
	  mkdir -p benchmarks/results/quick; \
	  $(BIN)/python benchmarks/slurm_launch.py --runs $(if $(QUICK),1,7) \
	    > benchmarks/results/$(if $(QUICK),quick/,)slurm_launch.json && cat benchmarks/results/$(if $(QUICK),quick/,)slurm_launch.json; \
	else echo "skipping the Slurm launch figure (needs root and slurm-wlm: make system)"; fi
