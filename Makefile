# The two commands of the README:
#   make demo   - the main job: the shipped model end to end (installs what it needs into .venv first)
#   make test   - the test suite (installs what it needs into .venv first)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test venv plugin clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing maskrcnn-deploy[dev] into $(VENV) (first run only; torch is large)"
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/maskrcnn-deploy demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# The RoIAlign plugin library with CUDA (and the TensorRT plugins when TensorRT headers are found, or
# TENSORRT_INCLUDE_DIR=...): builds into ~/.cache/maskrcnn-deploy/ and prints the path for trtexec --dynamicPlugins.
plugin: $(STAMP)
	$(PY) -c "from deploy_sdk import plugins; print(plugins.library_path(cuda=True))"

clean:
	rm -rf $(VENV) build demo_out
