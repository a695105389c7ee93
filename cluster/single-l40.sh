#!/usr/bin/env bash
# The whole loop on one 48 GB L40: a local head bound to loopback, one job.
#   bash cluster/single-l40.sh configs/llama3-8b-l40.yaml
# Installs the pinned GPU set (constraints-gpu.txt) into .venv first; a no-op once done.
set -euo pipefail
CONFIG=${1:-configs/llama3-8b-l40.yaml}
make venv-gpu
export PATH="$PWD/.venv/bin:$PATH"   # the job's `python` is the pinned one
export RAY_AUTH_MODE=token HF_HUB_OFFLINE=1 RAY_TRAIN_ENABLE_PRINT_PATCH=0
.venv/bin/ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --num-gpus=1
trap '.venv/bin/ray stop' EXIT
.venv/bin/ray job submit --address http://127.0.0.1:8265 --runtime-env cluster/runtime-env.yaml \
  -- python jobs/self_evolve.py --config "$CONFIG"
