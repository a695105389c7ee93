"""Train one stage on a Ray cluster: SFT (-> M0) or DPO (M^t -> M^{t+1}).

ray job submit --working-dir . -- python jobs/train.py sft --config configs/cpu-demo.yaml
ray job submit --working-dir . -- python jobs/train.py dpo --config configs/cpu-demo.yaml \
    --pairs runs/cpu-demo/iter_0/pairs.parquet --init runs/cpu-demo/sft
"""

import sys

from esevo_ray.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
