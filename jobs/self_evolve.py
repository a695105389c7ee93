"""Run the self-evolution loop (data -> SFT -> pairs/DPO/eval x T -> report).

ray job submit --working-dir . -- python jobs/self_evolve.py --config configs/cpu-demo.yaml
"""

import sys

from esevo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evolve", *sys.argv[1:]]))
