"""Prepare a run's Parquet datasets (contexts, SFT rows) on a Ray cluster.

RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
    -- python jobs/prepare_data.py --config configs/cpu-demo.yaml
"""

from esevo_ray.cli import run_job

if __name__ == "__main__":
    run_job(["data", "prepare"])
