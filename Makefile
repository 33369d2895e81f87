# Two commands for a new user: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch is pinned first so that no multi-GB CUDA build is pulled on CPU-only machines.
# Users with GPUs install CUDA torch the normal way before `pip install -e .`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[quant,serve,test]"
	touch $@

setup: $(VENV)/.installed

# No --model: the demo model bundled in reasonseg/assets/demo_model (docs/demo_model.md)
demo: setup
	$(VENV)/bin/reasonseg predict --image examples/shapes.png \
		--prompt "Which shape has no corners? Please output segmentation mask." --out vis_output

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) vis_output .pytest_cache
