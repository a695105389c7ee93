"""Generate one iteration of preference pairs with M^t on a Ray cluster.

ray job submit --working-dir . -- python jobs/generate_pairs.py \
    --config configs/cpu-demo.yaml --adapter runs/cpu-demo/m0/adapter --iteration 1
"""

import sys

from esevo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
