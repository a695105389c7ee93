"""DPO training throughput at steady state: under Ray Train vs the same trainer in-process.

Both modes build the trainer with `build_dpo_trainer` from the same config, log every step
and never checkpoint; the first `warmup` steps are dropped and pairs/s and tokens/s are
measured over the rest. The difference is Ray Train's cost (worker startup excluded).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from esevo_ray.config import RunConfig
from esevo_ray.training.common import TrainJob
from esevo_ray.training.dpo import build_dpo_trainer, dpo_job

logger = logging.getLogger(__name__)


class StepTimer(TrainerCallback):
    """Records (seconds, step, tokens seen) at every training log on rank 0."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "num_tokens" in logs and "loss" in logs:
            self.marks.append((time.perf_counter(), state.global_step, float(logs["num_tokens"])))


def bench_config(cfg: RunConfig, steps: int, warmup: int) -> RunConfig:
    """`cfg` with DPO set to run exactly warmup + steps steps, log each, no eval or saves."""
    total = warmup + steps
    dpo = cfg.dpo.model_copy(
        update={
            "max_steps": total,
            "logging_steps": 1,
            "eval_fraction": 0.0,
            "save_steps": total + 1,
            "early_stopping_patience": None,
        }
    )
    return cfg.model_copy(update={"dpo": dpo})


def timed_train(cfg: RunConfig, job: TrainJob, output_dir: str) -> dict[str, Any]:
    """Train and return the step marks and the global batch size (pairs per step)."""
    timer = StepTimer()
    started = time.perf_counter()
    trainer = build_dpo_trainer(cfg, job, output_dir, [timer])
    trainer.train()
    args = trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return {
        "marks": timer.marks,
        "started": started,
        "pairs_per_step": batch,
        "world_size": args.world_size,
    }


def _ray_loop(config: dict[str, Any]) -> dict[str, Any]:
    cfg = RunConfig.model_validate(config["cfg"])
    with tempfile.TemporaryDirectory() as tmp:
        return timed_train(cfg, TrainJob(**config["job"]), tmp)


def steady_state(run: dict[str, Any], warmup: int) -> dict[str, float]:
    """Pairs/s and tokens/s between the end of step `warmup` and the last step."""
    marks = [m for m in run["marks"] if m[1] >= warmup]
    if len(marks) < 2:
        raise ValueError(f"need at least 2 logged steps after warm-up {warmup}, got {len(marks)}")
    (t0, s0, n0), (t1, s1, n1) = marks[0], marks[-1]
    return {
        "steps": s1 - s0,
        "seconds": t1 - t0,
        "pairs_per_s": (s1 - s0) * run["pairs_per_step"] / (t1 - t0),
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "world_size": run["world_size"],
        # Model, data and trainer set-up up to the first logged step, inside the process.
        "startup_s": marks[0][0] - run["started"] if "started" in run else float("nan"),
    }


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def bench_train(
    cfg: RunConfig,
    pairs: str | Path,
    init_adapter: str | Path | None,
    steps: int = 8,
    warmup: int = 2,
    repeats: int = 3,
) -> dict[str, Any]:
    """DPO pairs/s and tokens/s in a plain process and under Ray Train (dpo.scaling).

    Each repeat runs both modes side by side; medians are reported. `wall_s` is the whole
    call as the driver sees it, so its difference is Ray Train's start-up overhead.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = bench_config(cfg, steps, warmup)
    job = dpo_job(cfg, pairs, init_adapter)
    scaling = cfg.dpo.scaling
    plain_runs, ray_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            t0 = time.perf_counter()
            plain = steady_state(timed_train(cfg, job, tmp), warmup)
            plain["wall_s"] = time.perf_counter() - t0
            trainer = TorchTrainer(
                _ray_loop,
                train_loop_config={
                    "cfg": cfg.model_dump(mode="json"),
                    "job": dataclasses.asdict(job),
                },
                scaling_config=ray.train.ScalingConfig(
                    num_workers=scaling.num_workers,
                    use_gpu=scaling.use_gpu,
                    resources_per_worker={"CPU": scaling.cpus_per_worker},
                ),
                run_config=ray.train.RunConfig(
                    name=f"bench-{uuid.uuid4().hex[:8]}", storage_path=str(Path(tmp) / "ray")
                ),
            )
            t0 = time.perf_counter()
            under_ray = steady_state(trainer.fit().return_value, warmup)
            under_ray["wall_s"] = time.perf_counter() - t0
            logger.info("repeat %d: plain %s | ray train %s", r + 1, plain, under_ray)
            plain_runs.append(plain)
            ray_runs.append(under_ray)
    plain, under_ray = _median(plain_runs), _median(ray_runs)
    return {
        "model": job.model_path,
        "warmup_steps": warmup,
        "measured_steps": steps,
        "repeats": repeats,
        "plain": plain,
        "ray_train": under_ray,
        "ray_over_plain_pairs_per_s": under_ray["pairs_per_s"] / plain["pairs_per_s"],
        "ray_startup_overhead_s": under_ray["wall_s"] - plain["wall_s"],
        "runs": {"plain": plain_runs, "ray_train": ray_runs},
    }
