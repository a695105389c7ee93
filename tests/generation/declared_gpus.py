"""Run by test_placement.py in a fresh process: Ray declares 2 GPUs on this CPU machine.

Kept out of the session's shared Ray instance (2 CPUs, no GPUs), which every other test uses.
The engines compute on CPU (`device=cpu`) while Ray reserves one GPU per actor, so what is
tested is the placement itself: the real actor-pool path, `map_batches(num_gpus=...)`, and
the CUDA_VISIBLE_DEVICES Ray gives each actor. Prints one JSON line.

    python tests/generation/declared_gpus.py MODEL CONTEXTS OUT_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The judge's placement in a driver that has not called ray.init (device auto).
JOINED = """
import json, sys
from esevo_ray.config import load_config
from esevo_ray.evaluation.local_judge import judge_placement
cfg = load_config(None, [*sys.argv[1:], "eval.judge.device=auto", "eval.judge.gpus_per_actor=null"])
print(json.dumps(judge_placement(cfg.eval.judge).as_dict()))
"""


def _gpus_back(ray, total: float, timeout: float = 60) -> float:
    """Seconds until the cluster's GPUs are all free again (the actors have exited)."""
    t0 = time.perf_counter()
    while ray.available_resources().get("GPU", 0) < total:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"GPUs still held {timeout}s after the stage returned")
        time.sleep(0.1)
    return time.perf_counter() - t0


def main(model: str, contexts: str, out: str) -> dict:
    import ray
    import ray.data

    from esevo_ray.config import load_config
    from esevo_ray.evaluation.local_judge import LocalJudge
    from esevo_ray.generation.pipeline import generate_pairs

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    # Dispatch only once both actors are up, so both get batches however loaded the machine
    # is (Ray Data's own start gate; the stage's code path is unchanged).
    ray.data.DataContext.get_current().wait_for_min_actors_s = 120
    overrides = [
        "generation.engine=hf", "generation.device=cpu", "generation.gpus_per_actor=1",
        "generation.num_actors=2", "generation.cpus_per_actor=1", "generation.batch_size=1",
        "generation.max_context_tokens=1000", "generation.decoding.max_new_tokens=4",
        "generation.reflection_decoding.max_new_tokens=4", "generation.max_attempts=1",
        "model.dtype=float32", "eval.judge.backend=hf", "eval.judge.device=cpu",
        "eval.judge.gpus_per_actor=1", "eval.judge.max_tokens=4", "eval.judge.parse_retries=0",
        "eval.judge.guided_json=false",
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    manifest = generate_pairs(cfg, contexts, Path(out), model_path=model)
    pairs_freed_s = _gpus_back(ray, 2)

    judge = LocalJudge(cfg.eval.judge, model)
    verdicts = judge.judge_many([("empathy", [{"role": "user", "content": "hi"}], "hello")])
    judge_actor = ray.get(judge._actor.__ray_call__.remote(lambda self: self.placed))
    del judge  # the actor exits with its last handle
    judge_freed_s = _gpus_back(ray, 2)

    # A driver that joins the cluster through RAY_ADDRESS (a job's) places the judge on the
    # cluster's GPUs, not on those its own torch sees (none here, as on a CPU head node).
    joined = subprocess.run(
        [sys.executable, "-c", JOINED, *overrides], capture_output=True, text=True, timeout=120,
        env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
    )  # fmt: skip
    judge_joined = (
        json.loads(joined.stdout.splitlines()[-1])
        if joined.returncode == 0
        else joined.stderr[-2000:]
    )

    # device auto on a cluster that declares GPUs is cuda; torch here sees none: the actor
    # says so instead of failing somewhere inside the engine.
    auto = load_config(None, [*overrides, "generation.device=auto", "generation.num_actors=1"])
    try:
        generate_pairs(auto, contexts, Path(out) / "auto", model_path=model)
        auto_error = None
    except Exception as e:  # noqa: BLE001 - the test asserts on the message
        auto_error = f"{type(e).__name__}: {e}"
    return {
        "placement": manifest["placement"],
        "rows": manifest["rows"],
        "pairs_freed_s": pairs_freed_s,
        "judge_verdicts": len(verdicts),
        "judge_actor": judge_actor,
        "judge_freed_s": judge_freed_s,
        "judge_joined": judge_joined,
        "auto_error": auto_error,
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(*sys.argv[1:4])))
