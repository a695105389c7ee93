"""Run the self-evolution loop (data -> SFT -> pairs/DPO/eval x T -> report).

ray job submit --working-dir . -- python jobs/self_evolve.py --config configs/cpu-demo.yaml
"""

from esevo_ray.cli import run_job

if __name__ == "__main__":
    run_job(["evolve"])
