# The two commands of the README:
#   make demo   - the main job: the shipped model end to end (installs what it needs into .venv first)
#   make test   - the test suite (installs what it needs into .venv first)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck venv plugin clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing maskrcnn-deploy[dev] into $(VENV) (first run only; torch is large; compiles the RoIAlign plugin library)"
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/maskrcnn-deploy demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# ruff (lint + format, pyproject.toml) for the Python, clang-format (plugins/.clang-format) for plugins/ and the C++
# test harness (tests/plugin_harness/), and the import-layer contract (lint-imports, pyproject.toml's
# [tool.importlinter]); CI runs it.
# `ruff check --fix . && ruff format .` and clang-format --style=file:plugins/.clang-format -i on the same files
# apply the style.
PLUGIN_SOURCES = $(shell git ls-files 'plugins/*.h' 'plugins/*.hpp' 'plugins/*.cpp' 'plugins/*.cu' 'plugins/*.cuh' \
	'tests/plugin_harness/*.cpp')
# mypy on the whole package, conversion and benchmarks included (files and settings in pyproject.toml's [tool.mypy]);
# CI runs it.
typecheck: $(STAMP)
	$(PY) -m mypy

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --style=file:plugins/.clang-format --dry-run --Werror $(PLUGIN_SOURCES)
	$(VENV)/bin/lint-imports

# The path of the RoIAlign plugin library with CUDA, for trtexec --dynamicPlugins: the one the install compiled into
# the package (deploy_sdk/_lib/), or, when that one lacks CUDA or the TensorRT plugins that headers found now (or
# TENSORRT_INCLUDE_DIR=...) allow, or plugins/ changed since, a developer build into ~/.cache/maskrcnn-deploy/.
plugin: $(STAMP)
	$(PY) -c "from deploy_sdk import plugins; print(plugins.library_path(cuda=True))"

clean:
	rm -rf $(VENV) build dist demo_out
