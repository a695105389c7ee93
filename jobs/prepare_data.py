"""Prepare a run's Parquet datasets (contexts, SFT rows) on a Ray cluster.

RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
    -- python jobs/prepare_data.py --config configs/cpu-demo.yaml
"""

import sys

from esevo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "prepare", *sys.argv[1:]]))
