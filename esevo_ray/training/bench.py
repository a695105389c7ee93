"""DPO training throughput at steady state: under Ray Train vs the same trainer in-process.

Both modes build the trainer with `build_dpo_trainer` from the same config, log every step
and never checkpoint; the first `warmup` steps are dropped and pairs/s and tokens/s are
measured over the rest. The difference is Ray Train's cost (worker startup excluded).
"""

from __future__ import annotations

import dataclasses
import logging
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
    trainer = build_dpo_trainer(cfg, job, output_dir, [timer])
    trainer.train()
    args = trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return {"marks": timer.marks, "pairs_per_step": batch, "world_size": args.world_size}


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
    }


def bench_train(
    cfg: RunConfig,
    pairs: str | Path,
    init_adapter: str | Path | None,
    steps: int = 8,
    warmup: int = 2,
) -> dict[str, Any]:
    """DPO pairs/s and tokens/s in a plain process and under Ray Train (dpo.scaling)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = bench_config(cfg, steps, warmup)
    job = dpo_job(cfg, pairs, init_adapter)
    with tempfile.TemporaryDirectory() as tmp:
        plain = steady_state(timed_train(cfg, job, tmp), warmup)
        logger.info("plain process: %s", plain)
        scaling = cfg.dpo.scaling
        trainer = TorchTrainer(
            _ray_loop,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "job": dataclasses.asdict(job)},
            scaling_config=ray.train.ScalingConfig(
                num_workers=scaling.num_workers,
                use_gpu=scaling.use_gpu,
                resources_per_worker={"CPU": scaling.cpus_per_worker},
            ),
            run_config=ray.train.RunConfig(
                name=f"bench-{uuid.uuid4().hex[:8]}", storage_path=str(Path(tmp) / "ray")
            ),
        )
        under_ray = steady_state(trainer.fit().return_value, warmup)
        logger.info("ray train: %s", under_ray)
    return {
        "model": job.model_path,
        "warmup_steps": warmup,
        "plain": plain,
        "ray_train": under_ray,
        "ray_over_plain_pairs_per_s": under_ray["pairs_per_s"] / plain["pairs_per_s"],
    }
