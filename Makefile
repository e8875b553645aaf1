# Two entry points (see README): `make gan` runs the main job, `make test` the test suite
# (which also builds the docs site strictly: tests/test_docs.py); `make docs` builds the site.
# Both set up .venv first. torch is pinned here, in the install path, because an unpinned
# torch pulls a multi-GB CUDA build; the package metadata itself allows a range.
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# Where the datasets are when there is no internet: this project's shared data, if present.
DATA  ?= $(firstword $(wildcard ../shared/data))
ARGS  ?=

.PHONY: setup gan test lint docs bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[lab,test]"
	touch $@

gan: setup
	BNLAB_DATA="$(DATA)" $(VENV)/bin/bnlab gan $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	BNLAB_TEST_DATA="$(DATA)" $(PY) -m pytest -q

# The docs site into site/ (open site/index.html; no server or network needed). --strict: a
# broken link, reference or docstring fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: setup
	$(PY) bench/bench_bn.py
	$(PY) bench/bench_adam.py
	BNLAB_DATA="$(DATA)" $(PY) bench/bench_gan.py --epochs 20
	$(PY) bench/bench_syncbn.py
	$(PY) bench/bench_compile.py
	BNLAB_DATA="$(DATA)" $(PY) bench/cluster_cost.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site
