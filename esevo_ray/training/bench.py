"""DPO training throughput at steady state, two modes side by side in each repeat.

- compare "ray": under Ray Train vs the same trainer in-process. The difference is Ray
  Train's cost (worker start-up excluded).
- compare "lm-head": in-process, TRL's fused LM head scoring every position vs only the
  labelled ones (esevo_ray/training/lm_head.py), the switch the CPU trainers run with.

Every mode builds the trainer with `build_dpo_trainer` from the same config, logs every step
and never checkpoints; the first `warmup` steps are dropped and pairs/s and tokens/s are
measured over the rest.
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
from esevo_ray.numerics import release_gpu_memory
from esevo_ray.training.common import TrainJob
from esevo_ray.training.dpo import build_dpo_trainer, dpo_job
from esevo_ray.training.lm_head import every_position

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
    del trainer
    release_gpu_memory()  # the next mode may train in a Ray worker on the same GPU
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
        "last_step": s1,
        "seconds": t1 - t0,
        "pairs_per_s": (s1 - s0) * run["pairs_per_step"] / (t1 - t0),
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "world_size": run["world_size"],
        # Model, data and trainer set-up, and step 1, up to its log, inside the process
        # (whatever the warm-up: from the first mark, not the first measured one).
        "startup_s": run["marks"][0][0] - run["started"] if "started" in run else float("nan"),
    }


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _walled(run: dict[str, float], t0: float) -> dict[str, float]:
    """`run` with its wall time, and the part of it outside training steps at the steady pace
    (start-up and shut-down): each run's slower or faster steps are not counted as start-up."""
    wall = time.perf_counter() - t0
    per_step = run["seconds"] / run["steps"]
    return {**run, "wall_s": wall, "outside_steps_s": wall - run["last_step"] * per_step}


def _plain(cfg: RunConfig, job: TrainJob, tmp: str, warmup: int) -> dict[str, float]:
    import torch

    # The threads a Ray worker gets (OMP_NUM_THREADS = its CPUs), so that both modes compute
    # with as many cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.dpo.scaling.cpus_per_worker)))
    try:
        t0 = time.perf_counter()
        return _walled(steady_state(timed_train(cfg, job, tmp), warmup), t0)
    finally:
        torch.set_num_threads(threads)


def _every_position(cfg: RunConfig, job: TrainJob, tmp: str, warmup: int) -> dict[str, float]:
    with every_position():
        return _plain(cfg, job, tmp, warmup)


def _ray_train(cfg: RunConfig, job: TrainJob, tmp: str, warmup: int) -> dict[str, float]:
    import ray.train
    from ray.train.torch import TorchTrainer

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
    t0 = time.perf_counter()
    return _walled(steady_state(trainer.fit().return_value, warmup), t0)


# --compare: (baseline, mode) and the key of the mode / baseline pairs/s ratio.
COMPARISONS = {
    "ray": ({"plain": _plain, "ray_train": _ray_train}, "ray_over_plain_pairs_per_s"),
    "lm-head": (
        {"every_position": _every_position, "labelled": _plain},
        "labelled_over_every_position_pairs_per_s",
    ),
}


def bench_train(
    cfg: RunConfig,
    pairs: str | Path,
    init_adapter: str | Path | None,
    steps: int = 8,
    warmup: int = 2,
    repeats: int = 3,
    compare: str = "ray",
) -> dict[str, Any]:
    """DPO pairs/s and tokens/s of two modes (`COMPARISONS[compare]`), medians of `repeats`.

    Each repeat runs both modes side by side. With "ray", `wall_s` is the whole call as the
    driver sees it; the difference of `outside_steps_s` (the wall time less the steps at each
    mode's steady pace) is Ray Train's start-up overhead. With "lm-head", both
    run in-process; on CUDA TRL already scores labelled positions only, so expect about 1.
    """
    modes, ratio = COMPARISONS[compare]
    cfg = bench_config(cfg, steps, warmup)
    job = dpo_job(cfg, pairs, init_adapter)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for name, mode in modes.items():
                runs[name].append(mode(cfg, job, tmp, warmup))
            logger.info("repeat %d: %s", r + 1, {k: v[-1] for k, v in runs.items()})
    (base, base_runs), (other, other_runs) = runs.items()
    medians = {base: _median(base_runs), other: _median(other_runs)}
    report: dict[str, Any] = {
        "model": job.model_path,
        "compare": compare,
        "warmup_steps": warmup,
        "measured_steps": steps,
        "repeats": repeats,
        **medians,
        ratio: medians[other]["pairs_per_s"] / medians[base]["pairs_per_s"],
        "runs": runs,
    }
    if compare == "ray":
        # Paired by repeat: each repeat ran both modes side by side.
        pairs = zip(base_runs, other_runs, strict=True)
        outside = [o["outside_steps_s"] - b["outside_steps_s"] for b, o in pairs]
        report["ray_startup_overhead_s"] = statistics.median(outside)
    return report
