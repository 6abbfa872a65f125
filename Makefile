# ptreclaim: run every target from the repository root.
#
#   make run          set up, then train the default experiment (the main job)
#   make test         set up, then ruff + mypy + pytest + docs (what .ci/run does)
#   make check-model  the page-table model against the live kernel
#   make lint   ruff + mypy only
#   make docs   build the documentation site into build/site/ (mkdocs --strict)
#   make bench  run benchmarks/*.py
#   make clean  remove build products and caches (keeps .venv; `make distclean` removes it)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

SYS_PYTHON ?= python3
VENV       ?= .venv
PYTHON     := $(VENV)/bin/python
# The console script, not `python -m pytest`: -m would put the repo root on sys.path,
# and the bare names `envs`/`agents` would import where an installed copy would not.
PYTEST     := $(VENV)/bin/pytest
# The CPU build of torch 2.13 lies on local disk (pip's find-links); installing it
# before the project keeps pip from resolving torch against PyPI, whose default
# build pulls several GB of CUDA libraries.
TORCH_SPEC ?= torch==2.13.*
# Re-install only when the project's metadata changes (the version lives in __init__).
STAMP      := $(VENV)/.ptreclaim-setup.stamp

MYPY_TREE  := build/mypy
MYPY_EXTRA  = $(wildcard scripts/*.py benchmarks/*.py)
BENCHES     = $(wildcard benchmarks/*.py)

.PHONY: help setup run check-model test lint ruff mypy pytest docs bench clean distclean

help:
	@sed -n '3,10s/^# \{0,1\}//p' Makefile

setup: $(STAMP)

$(PYTHON):
	$(SYS_PYTHON) -m venv $(VENV)

# The compiled simulator core (envs/sim/fast/) is built by the same install: its
# sources are prerequisites, so an edited .cpp/.hpp/.pyx is rebuilt by the next make.
FAST_SOURCES := setup.py $(wildcard envs/sim/fast/*.cpp envs/sim/fast/*.hpp envs/sim/fast/*.pyx)
FAST_SOURCES := $(filter-out envs/sim/fast/_fast.cpp,$(FAST_SOURCES))

$(STAMP): pyproject.toml ptreclaim/__init__.py $(FAST_SOURCES) | $(PYTHON)
	$(PYTHON) -m pip install '$(TORCH_SPEC)'
	$(PYTHON) -m pip install -e '.[dev]'
	@touch $@

# The main job: train the default experiment (configs/experiments/default.yaml:
# PPO, 3 seeds, then evaluation against every heuristic and the oracle bound on
# the held-out scenarios); about 12 minutes on 2 cores.
run: $(STAMP)
	$(PYTHON) scripts/train.py

# The page-table model against the live kernel, op by op.
check-model: $(STAMP)
	$(PYTHON) scripts/kernel_check.py compare tests/data/kernel/*.script

# Runs all four checks even when one fails, so one CI log shows every problem.
# pytest's exit code is passed through as is: 5 ("no tests collected") fails too.
test: $(STAMP)
	@failed=""; \
	$(MAKE) --no-print-directory ruff   || failed="$$failed ruff"; \
	$(MAKE) --no-print-directory mypy   || failed="$$failed mypy"; \
	$(MAKE) --no-print-directory pytest || failed="$$failed pytest"; \
	$(MAKE) --no-print-directory docs   || failed="$$failed docs"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed"; exit 1; fi; \
	echo "make test: ruff, mypy, pytest and docs passed"

lint: $(STAMP)
	@failed=""; \
	$(MAKE) --no-print-directory ruff || failed="$$failed ruff"; \
	$(MAKE) --no-print-directory mypy || failed="$$failed mypy"; \
	if [ -n "$$failed" ]; then echo "make lint: FAILED:$$failed"; exit 1; fi

ruff: $(STAMP)
	$(PYTHON) -m ruff check .

# mypy cannot see envs/ and agents/ as ptreclaim.envs / ptreclaim.agents (the
# package-dir mapping lives in setuptools, and the editable install maps them with an
# import hook mypy does not run), so it checks a tree of symlinks laid out as
# installed, then rewrites the reported paths back to the real files.  The tree is
# only topped up (missing links added, dangling ones dropped), never rebuilt, so two
# `make mypy` running at once in one checkout do not collide.
mypy: $(STAMP)
	@mkdir -p $(MYPY_TREE)/ptreclaim
	@for p in ptreclaim/* envs agents configs; do \
		case "$$p" in */__pycache__) continue ;; esac; \
		link=$(MYPY_TREE)/ptreclaim/$${p#ptreclaim/}; \
		[ -L "$$link" ] || ln -s "../../../$$p" "$$link"; \
	done
	@find $(MYPY_TREE)/ptreclaim -maxdepth 1 -xtype l -delete
	@echo "$(PYTHON) -m mypy ptreclaim envs agents configs $(MYPY_EXTRA)"
	@$(PYTHON) -m mypy $(MYPY_TREE)/ptreclaim $(MYPY_EXTRA) \
		| sed -E -e 's#^$(MYPY_TREE)/ptreclaim/(envs|agents|configs)/#\1/#' -e 's#^$(MYPY_TREE)/##'

pytest: $(STAMP)
	$(PYTEST)

# The documentation site (mkdocs.yml, docs/) into build/site/.  --strict turns every
# warning into a failure: a dead link or anchor, a page missing from the nav.
# NO_MKDOCS_2_WARNING silences mkdocs-material's banner about its successor.  Never
# --quiet: it drops the warnings before --strict counts them, and the build passes.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict

bench: $(STAMP)
	@if [ -z "$(BENCHES)" ]; then echo "no benchmarks in benchmarks/"; fi
	@for b in $(BENCHES); do echo "$(PYTHON) $$b"; $(PYTHON) "$$b"; done

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
