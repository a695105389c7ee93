"""Train one stage on a Ray cluster: SFT (-> m0) or DPO (m<t-1> -> m<t>).

RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
    --runtime-env-json '{"excludes": [".venv", "runs", ".git"]}' \
    -- python jobs/train.py sft --config configs/cpu-demo.yaml "output_dir=$PWD/runs"
RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
    --runtime-env-json '{"excludes": [".venv", "runs", ".git"]}' \
    -- python jobs/train.py dpo --config configs/cpu-demo.yaml --iteration 1 \
    "output_dir=$PWD/runs"

The job runs in Ray's copy of the working dir: output_dir must be absolute (README, "On a
Ray cluster").
"""

import sys

from esevo_ray.cli import run_job

STAGES = ("sft", "dpo")

if __name__ == "__main__":
    stage = next((a for a in sys.argv[1:] if a not in ("-v", "--verbose")), None)
    if stage not in (*STAGES, "-h", "--help"):  # else argparse offers every esevo command
        print(f"usage: python jobs/train.py [-v] {{sft,dpo}} --config CONFIG ...; got {stage!r}",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    run_job([])
