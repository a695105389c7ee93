"""Train one stage on a Ray cluster: SFT (-> m0) or DPO (m<t-1> -> m<t>).

ray job submit --working-dir . -- python jobs/train.py sft --config configs/cpu-demo.yaml
ray job submit --working-dir . -- python jobs/train.py dpo --config configs/cpu-demo.yaml \
    --iteration 1
"""

from esevo_ray.cli import run_job

if __name__ == "__main__":
    run_job([])
