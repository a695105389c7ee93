"""Run by test_pipeline.py in a fresh process: a batch that kills its actor every time.

Kept out of the session's shared Ray instance: Ray Data restarts the actor once more after
the batch's last retry, and the failed pool keeps its handle in a reference cycle, so the
actor held a CPU of the shared instance until some later garbage collection (in the full
suite not even `gc.collect()` freed it), and the next test that needed both CPUs waited
forever. Prints one line: "RESULT <exception type>".

    python tests/generation/fatal_batch.py MODEL CONTEXTS OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow.parquet as pq


def main(model: str, contexts: str, out: str) -> str:
    import ray
    from ray.exceptions import RayError

    from esevo_ray.generation import pipeline
    from tests.generation.conftest import gen_cfg

    class Fatal(pipeline.Responder):
        def __call__(self, batch):
            os._exit(1)

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    cfg = gen_cfg(**{"generation.batch_size": 2, "generation.max_model_len": 2048})
    try:
        pipeline.run_engine_actors(
            cfg, pq.read_table(contexts).slice(0, 1), Path(out), Fatal,
            model_path=model, adapter=None, label="fatal", model_name="m0",
        )  # fmt: skip
    except RayError as e:
        return type(e).__name__
    return "none"


if __name__ == "__main__":
    print(f"RESULT {main(*sys.argv[1:4])}", flush=True)
