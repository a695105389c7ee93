#!/usr/bin/env bash
# The whole loop on one 48 GB L40: a local head bound to loopback, one job.
#   bash cluster/single-l40.sh configs/llama3-8b-l40.yaml [key=value ...]
# Overrides after the config go to the job, e.g. 'data.seed_sources=[esconv]' without ExTES.
# Installs the pinned GPU set (constraints-gpu.txt) into .venv first; a no-op once done.
# Where things are (defaults as on the cluster recipes): $ESEVO_DATA_DIR the datasets
# (/data/esc), $ESEVO_MODELS the model folders (/models), $ESEVO_RUNS the run folders
# ($PWD/runs). The job runs in Ray's temporary copy of this folder, so the run goes to
# $ESEVO_RUNS, an absolute path, and a rerun of this script continues it.
set -euo pipefail
CONFIG=${1:-configs/llama3-8b-l40.yaml}
OVERRIDES=("${@:2}")
make venv-gpu
export PATH="$PWD/.venv/bin:$PATH"   # the job's `python` is the pinned one
export RAY_AUTH_MODE=token HF_HUB_OFFLINE=1 RAY_TRAIN_ENABLE_PRINT_PATCH=0
# Absolute: the job resolves them in Ray's copy of this folder, not here.
ESEVO_DATA_DIR=$(realpath -m "${ESEVO_DATA_DIR:-/data/esc}")
ESEVO_MODELS=$(realpath -m "${ESEVO_MODELS:-/models}")
export ESEVO_DATA_DIR ESEVO_MODELS
RUNS=$(realpath -m "${ESEVO_RUNS:-$PWD/runs}")
# cluster/runtime-env.yaml with this machine's data and model folders.
RUNTIME_ENV=$(.venv/bin/python -c '
import json, os, yaml
env = yaml.safe_load(open("cluster/runtime-env.yaml"))
env["env_vars"].update({k: os.environ[k] for k in ("ESEVO_DATA_DIR", "ESEVO_MODELS")})
print(json.dumps(env))')
.venv/bin/ray get-auth-token --generate > /dev/null   # `ray start` needs a token to exist
.venv/bin/ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --num-gpus=1
trap '.venv/bin/ray stop' EXIT
.venv/bin/ray job submit --address http://127.0.0.1:8265 --runtime-env-json "$RUNTIME_ENV" \
  -- python jobs/self_evolve.py --config "$CONFIG" "output_dir=$RUNS" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
