"""Trainer callbacks for runs under Ray Train: progress on rank 0, checkpoint reports, and
the fault-tolerance test hook."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from esevo_ray.layout import ADAPTER_CONFIG, ADAPTER_FILE, is_adapter
from esevo_ray.training.common import HF_DIR

logger = logging.getLogger(__name__)

BEST_DIR = "best"  # beside HF_DIR in a Ray checkpoint: the best adapter, when it is older

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
        metrics = {**latest_metrics(state.log_history), "step": state.global_step}
        with tempfile.TemporaryDirectory() as tmp:
            filled = fill_checkpoint(Path(args.output_dir), state, Path(tmp))
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if filled else None
            ray.train.report(metrics, checkpoint=checkpoint)
        self.seconds += time.perf_counter() - t0


def fill_checkpoint(output_dir: Path, state: Any, root: Path) -> bool:
    """What this rank reports of the HF checkpoint just saved in `output_dir`, put in `root`;
    False when it has nothing to report.

    Rank 0: the checkpoint (trainable adapter, optimizer, scheduler, trainer state) as
    HF_DIR and, when an older checkpoint is the best one transformers keeps, that adapter as
    BEST_DIR. Other ranks: their RNG state.
    """
    src = output_dir / f"checkpoint-{state.global_step}"
    dst = root / HF_DIR
    if state.is_world_process_zero:
        copy_trainable_checkpoint(src, dst)
        best = best_step(state.best_model_checkpoint)
        if best and best != state.global_step:
            _copy_adapter(output_dir / f"checkpoint-{best}", root / BEST_DIR)
    else:
        for rng in src.glob("rng_state_*.pth"):
            dst.mkdir(exist_ok=True)
            shutil.copy2(rng, dst / rng.name)
    return dst.exists()


def best_step(checkpoint: str | None) -> int | None:
    """The step of the best checkpoint transformers keeps (`best_model_checkpoint`), None
    without one. It is not always the best evaluation's step (`best_global_step`): an
    evaluation between saves (eval_steps below save_steps) has no checkpoint, and
    transformers then keeps the best one that has."""
    return int(Path(checkpoint).name.removeprefix("checkpoint-")) if checkpoint else None


def restore_best(restored: Path, output_dir: Path) -> None:
    """Put the best evaluation's adapter of a restored Ray checkpoint where the resumed
    Trainer looks for it: `<output_dir>/checkpoint-<best step>`.

    The Trainer state records the best model as a folder of the worker that saved it. A
    worker restarted on another node has no such folder, and transformers would then drop
    the best model and end on the last one (load_best_model_at_end with early stopping).
    """
    state_file = restored / HF_DIR / "trainer_state.json"
    if not state_file.exists():
        return
    state = json.loads(state_file.read_text())
    best = best_step(state.get("best_model_checkpoint"))
    if not best:
        return
    target = output_dir / f"checkpoint-{best}"
    if not is_adapter(target):
        source = restored / (HF_DIR if best == state["global_step"] else BEST_DIR)
        if not is_adapter(source):
            logger.warning("the checkpoint holds no adapter of the best step %d", best)
            return
        _copy_adapter(source, target)
    state["best_model_checkpoint"] = str(target)
    state_file.write_text(json.dumps(state, indent=2))


def _copy_adapter(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_CONFIG, ADAPTER_FILE):
        shutil.copy2(src / name, dst / name)


def copy_trainable_checkpoint(src: Path, dst: Path) -> None:
    """Copy an HF checkpoint without the subfolders of extra (frozen) adapters.

    With extra adapter subfolders present, HF's resume loads only those and leaves the
    trained "default" adapter at its initial weights.
    """

    def extra_adapters(folder: str, names: list[str]) -> list[str]:
        if Path(folder) != src:
            return []
        return [n for n in names if (src / n / ADAPTER_CONFIG).exists()]

    shutil.copytree(src, dst, ignore=extra_adapters)


class StopAgain(TrainerCallback):
    """For a run resumed from a checkpoint saved as training stopped (early stopping): stop
    again. transformers restores the stop, then clears it as training begins, so the run
    trained on to the next evaluation, and past it were that one better. Its loop looks
    only after a step: one step is taken, and load_best_model_at_end still ends on the
    best adapter."""

    def on_train_begin(self, args, state, control, **kwargs):
        control.should_training_stop = True


def stopped_at(hf_checkpoint: str | Path) -> bool:
    """Whether the Trainer checkpoint was saved as training stopped (early stopping, or
    max_steps)."""
    state = json.loads((Path(hf_checkpoint) / "trainer_state.json").read_text())
    control = state.get("stateful_callbacks", {}).get("TrainerControl", {})
    return bool(control.get("args", {}).get("should_training_stop"))


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
