"""Generate the preference pairs of iteration t with m<t-1> on a Ray cluster.

ray job submit --working-dir . -- python jobs/generate_pairs.py \
    --config configs/cpu-demo.yaml --iteration 1
"""

from esevo_ray.cli import run_job

if __name__ == "__main__":
    run_job(["generate"])
