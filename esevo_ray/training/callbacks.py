"""Trainer callbacks for runs under Ray Train: progress on rank 0, checkpoint reports, and
the fault-tolerance test hook."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from esevo_ray.training.common import HF_DIR

logger = logging.getLogger(__name__)

PROGRESS_KEYS = (
    "loss",
    "eval_loss",
    "rewards/margins",
    "rewards/accuracies",
    "learning_rate",
    "train_loss",
)


class InjectedFailure(RuntimeError):
    """Raised on purpose by the `scaling.inject_failure_at_step` test hook."""


def latest_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The most recent value of every numeric metric in a Trainer's log history."""
    merged: dict[str, float] = {}
    for entry in log_history:
        merged.update({k: v for k, v in entry.items() if isinstance(v, int | float)})
    return merged


class ProgressLogger(TrainerCallback):
    """Rank 0 logs step, losses, reward margins and training tokens/s at every log."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._last: tuple[float, float] | None = None  # (time, tokens seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        parts = [f"{self.stage} step {state.global_step}/{state.max_steps}"]
        parts += [f"{k} {logs[k]:.4g}" for k in PROGRESS_KEYS if k in logs]
        tokens, now = logs.get("num_tokens"), time.monotonic()
        if tokens is not None:
            if self._last is not None and now > self._last[0]:
                parts.append(f"tokens/s {(tokens - self._last[1]) / (now - self._last[0]):.1f}")
            self._last = (now, tokens)
        logger.info(", ".join(parts))


class RayReportCallback(TrainerCallback):
    """After each HF save, report the latest metrics and the checkpoint to Ray Train.

    Every rank calls `ray.train.report` (it is a barrier); Ray merges the ranks' folders.
    Extra adapters (the frozen DPO "ref" copy) are left out: they are rebuilt from the init
    adapter on restart, and HF's resume would otherwise load only those subfolders.
    """

    def __init__(self) -> None:
        self.seconds = 0.0  # spent copying and reporting checkpoints

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        t0 = time.perf_counter()
        src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        metrics = {**latest_metrics(state.log_history), "step": state.global_step}
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / HF_DIR
            if state.is_world_process_zero:
                copy_trainable_checkpoint(src, dst)
            else:
                for rng in src.glob("rng_state_*.pth"):
                    dst.mkdir(exist_ok=True)
                    shutil.copy2(rng, dst / rng.name)
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if dst.exists() else None
            ray.train.report(metrics, checkpoint=checkpoint)
        self.seconds += time.perf_counter() - t0


def copy_trainable_checkpoint(src: Path, dst: Path) -> None:
    """Copy an HF checkpoint without the subfolders of extra (frozen) adapters.

    With extra adapter subfolders present, HF's resume loads only those and leaves the
    trained "default" adapter at its initial weights.
    """

    def extra_adapters(folder: str, names: list[str]) -> list[str]:
        if Path(folder) != src:
            return []
        return [n for n in names if (src / n / "adapter_config.json").exists()]

    shutil.copytree(src, dst, ignore=extra_adapters)


class FailureInjector(TrainerCallback):
    """Test hook: raise right after the first checkpoint at or after `step` is reported."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise InjectedFailure(
                f"injected failure after the checkpoint at step {state.global_step} "
                "(scaling.inject_failure_at_step)"
            )
