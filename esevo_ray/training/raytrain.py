"""Ray Train wiring shared by SFT and DPO: one TorchTrainer run per stage.

    driver:  TorchTrainer.fit -> copy the final adapter (last Ray checkpoint) to out_dir
    worker:  resume from ray.train.get_checkpoint() -> build the TRL trainer -> train
             -> rank 0 reports the final adapter as the run's last checkpoint

Every worker builds the same trainer; DDP across workers comes from the process group that
TorchTrainer sets up. Each HF save is reported to Ray Train (rank 0 sends adapter, optimizer
and scheduler state, and the best evaluation's adapter when an older checkpoint holds it;
every rank its RNG state) and a restarted worker group, on any node, resumes the HF Trainer
from the latest one with early stopping's best model intact; so does the stage run again
after its driver stopped (`run_name`: the run is named by its inputs). The final adapter
travels as a Ray checkpoint, so workers on other nodes never write into the driver's
folders; the driver writes the output atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from esevo_ray import profile
from esevo_ray.config import (
    NOT_TRAINED,
    ConfigError,
    RunConfig,
    ScalingSection,
    apply_overrides,
    save_config,
)
from esevo_ray.data.dialogue import DataError
from esevo_ray.io import (
    atomic_dir,
    atomic_write_text,
    check_replaceable,
    files_digest,
    set_aside,
)
from esevo_ray.layout import is_adapter
from esevo_ray.models import adapter_hash, model_fingerprint
from esevo_ray.numerics import describe, no_cuda, weights_dtype
from esevo_ray.resources import fitting, node_resources
from esevo_ray.schema import parquet_files
from esevo_ray.storage import check_shared
from esevo_ray.training.common import HF_DIR, TrainerBuilder, TrainJob, save_adapter

# Ray Train's print patch rewrites every worker print; plain logs are easier to read.
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

logger = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"
FINAL_DIR = "adapter"  # in the last Ray checkpoint of a run: the trained adapter


def run_stage(
    cfg: RunConfig,
    job: TrainJob,
    builder: TrainerBuilder,
    out_dir: str | Path,
    *,
    reuse: bool = False,
) -> Path:
    """Train one stage under Ray Train and write its adapter folder (atomically) to `out_dir`.

    `reuse`: an adapter `out_dir` already holds from the same Ray Train run (`run_name`: the
    same settings, model, data, init adapter and folder; `esevo sft` run alone before the
    loop, or a driver stopped between export and its record) is kept, not trained again.

    Raises:
        DataError, ConfigError: a worker found the data or the settings unfit to train on,
            or ran out of GPU memory (`user_error`).
        ray.train.TrainingFailedError: the run failed more often than scaling.max_failures.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    section, out_dir = job.section(cfg), Path(out_dir).resolve()
    name = run_name(cfg, job, out_dir)
    base = model_fingerprint(Path(job.model_path))
    if reuse and _exported_by(out_dir, name, base):
        logger.info("%s: %s holds the adapter of Ray Train run %s already: kept", job.stage,
                    out_dir, name)  # fmt: skip
        return out_dir
    check_replaceable(out_dir, holds="adapter_config.json", what="LoRA adapter")  # before training
    scaling = section.scaling
    storage = scaling.storage_path or str(out_dir.parent / "ray_train")
    local = "://" not in storage
    if local:
        storage = str(Path(storage).resolve())  # Ray Train wants an absolute local path
        set_aside_unresumable(Path(storage) / name, job.stage)
    # Workers on other nodes read the data and write checkpoints the driver exports.
    reads = [job.data_path, job.model_path, job.init_adapter]
    check_shared(job.stage, writes=[storage] if local else [], reads=reads)
    check_workers(scaling, job.stage)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "job": dataclasses.asdict(job),
            "builder": builder,
            "run_name": name,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    logger.info(
        "%s: Ray Train run %s, %d worker(s), storage %s",
        job.stage,
        name,
        scaling.num_workers,
        storage,
    )
    start = time.time()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        if (said := user_error(e, job.stage)) is not None:
            raise said from e
        raise
    wall = time.time() - start
    t0 = time.perf_counter()
    extra = {
        "run_name": name,
        "model_fingerprint": base,
        "trained_on": trained_on(cfg, job),
        "wall_seconds": wall,
    }
    out = export(result, cfg, job, out_dir, extra)
    _record_phases(out, start, time.perf_counter() - t0)
    # Exported: the run's checkpoints are done with, and the stage run again on the same
    # inputs (a retrained adapter asked for) must train afresh, not find this run finished.
    _remove_run(storage, name)
    return out


def user_error(error: Exception, stage: str) -> Exception | None:
    """What a failed run's workers raised, said as the driver's own checks say it: a worker's
    DataError or ConfigError itself, out of GPU memory as a ConfigError naming the settings
    that decide it; None for any other failure (it keeps Ray Train's traceback).

    Ray Train wraps a worker's exception in a TrainingFailedError whose message is the
    worker's traceback: the CLI printed a bug's traceback for what is the user's to change.
    """
    import torch

    failures = getattr(error, "worker_failures", None) or {}  # WorkerGroupError: rank -> error
    for rank in sorted(failures):
        cause = failures[rank]
        if isinstance(cause, (DataError, ConfigError)):
            return cause
        if isinstance(cause, torch.OutOfMemoryError):
            first_line = (str(cause).strip().splitlines() or [""])[0]
            return ConfigError(
                f"{stage}: worker {rank} ran out of GPU memory ({first_line}): lower "
                f"{stage}.per_device_batch_size (raising gradient_accumulation_steps keeps the "
                f"batch) or {stage}.max_length, or set {stage}.gradient_checkpointing=true; "
                f"`esevo bench memory --config <config>` measures the peak"
            )
    return None


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


def unresumable(run_dir: Path) -> str | None:
    """Why Ray Train could not resume the run folder `run_dir`; None when it can, or when
    there is nothing to resume. (Ray refuses such a folder for good, and the run name is
    fixed by the stage's inputs, so every rerun would fail the same way.)"""
    import ray

    snapshot = run_dir / SNAPSHOT
    if not snapshot.exists():
        return None
    try:
        state = json.loads(snapshot.read_text())
        names = [r["checkpoint_dir_name"] for r in state["checkpoint_results"]]
    except (ValueError, KeyError, TypeError) as e:  # e.g. empty: killed while writing it
        return f"its {SNAPSHOT} is unreadable ({type(e).__name__}: {e})"
    if state.get("ray_version") != ray.__version__:
        return f"it was written by Ray {state.get('ray_version')}, not {ray.__version__}"
    if gone := [n for n in names if not (run_dir / n).is_dir()]:
        return f"its checkpoint {gone[0]} is gone"
    return None


def set_aside_unresumable(run_dir: Path, stage: str) -> None:
    """Move a Ray Train run folder that cannot be resumed to `<name>.unresumable-<time>`,
    so the stage trains afresh; nothing is deleted."""
    if (why := unresumable(run_dir)) is None:
        return
    aside = set_aside(run_dir, "unresumable")
    logger.warning("%s: Ray Train run %s cannot be resumed (%s): moved to %s, training afresh",
                   stage, run_dir.name, why, aside)  # fmt: skip


def _remove_run(storage: str, name: str) -> None:
    """Delete a finished Ray Train run folder (local or remote storage)."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    try:
        fs.delete_dir(f"{root.rstrip('/')}/{name}")
    except (FileNotFoundError, OSError) as e:
        logger.warning("could not remove the finished Ray Train run %s/%s: %s", storage, name, e)


def run_name(cfg: RunConfig, job: TrainJob, out_dir: str | Path) -> str:
    """The Ray Train run of a stage, named by what it trains and where: its settings, the
    model (its path and fingerprint: one converted again in place is another model) and
    dtype, the data's bytes, the init adapter's weights and the output folder.

    Ray Train resumes a run of the same name and storage from its last checkpoint, so a stage
    stopped part-way (a driver stopped, a job killed) continues where it was when it runs
    again on the same inputs; on others, or into another folder (another run directory), it
    starts afresh, never from another run's state.
    """
    key = {
        **_trained_key(cfg, job),
        "model": str(Path(job.model_path).resolve()),
        "model_fingerprint": model_fingerprint(Path(job.model_path)),
        "out_dir": str(Path(out_dir).resolve()),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.name}-{job.stage}-{digest}"


def _trained_key(cfg: RunConfig, job: TrainJob) -> dict[str, Any]:
    """What decides the weights a stage trains, paths aside: its trained settings, the
    dtype, the data's bytes and the init adapter's weights."""
    not_trained = apply_overrides({}, [f"{key}=true" for key in NOT_TRAINED])  # as `exclude`
    return {
        "section": job.section(cfg).model_dump(mode="json", exclude=not_trained),
        "dtype": cfg.model.dtype,
        "data": files_digest(parquet_files(job.data_path), named=True),
        "init_adapter": adapter_hash(job.init_adapter),
    }


def trained_on(cfg: RunConfig, job: TrainJob) -> str:
    """A digest of `_trained_key`, recorded in train_summary.json: with the base model's
    fingerprint beside it, it names an adapter by what it was trained from, wherever the
    run folder and the model lie (a run name also holds their paths)."""
    key = json.dumps(_trained_key(cfg, job), sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def trained_as(adapter_dir: str | Path, cfg: RunConfig, job: TrainJob) -> bool:
    """Whether the adapter in `adapter_dir` is what `job` under `cfg` trains: False for one
    that `esevo sft` or `esevo dpo` wrote there from other data, another init adapter or
    other settings (or without a readable summary). An adapter exported before summaries
    recorded `trained_on` is taken as it is."""
    try:
        summary = read_summary(adapter_dir)
    except (OSError, ValueError):
        return False
    if "trained_on" not in summary:
        return True
    base = model_fingerprint(Path(job.model_path))
    return (
        summary["trained_on"] == trained_on(cfg, job) and summary.get("model_fingerprint") == base
    )


def _exported_by(adapter_dir: Path, name: str, base: str) -> bool:
    """Whether `adapter_dir` holds the adapter that Ray Train run `name` exported from the
    base model of fingerprint `base` (one converted again since is another)."""
    try:
        summary = read_summary(adapter_dir) if is_adapter(adapter_dir) else {}
    except (OSError, ValueError):
        return False
    return summary.get("run_name") == name and summary.get("model_fingerprint") == base


def read_summary(adapter_dir: str | Path) -> dict[str, Any]:
    """The train_summary.json of an exported adapter: steps, metrics, phases, numerics."""
    return json.loads((Path(adapter_dir) / SUMMARY_FILE).read_text())


def _record_phases(out_dir: Path, fit_start: float, export_s: float) -> None:
    """Start-up (Ray workers, imports, model and data load), steps, checkpoints and export."""
    phases = read_summary(out_dir).get("phases")
    if not phases:  # a summary written before phases were measured
        return
    profile.record("startup", phases["loop_start"] - fit_start + phases["build_s"])
    profile.record("compute", phases["train_s"] - phases["checkpoint_s"])
    profile.record("io", phases["checkpoint_s"] + export_s)


def export(
    result: Any, cfg: RunConfig, job: TrainJob, out_dir: Path, extra: dict[str, Any]
) -> Path:
    """Copy the final adapter of a finished run to `out_dir` with its summary and config."""
    if result.checkpoint is None:
        raise RuntimeError(f"{job.stage} run {extra['run_name']} finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        src = Path(ckpt) / FINAL_DIR
        if not (src / "adapter_model.safetensors").exists():
            raise RuntimeError(
                f"the last checkpoint of {extra['run_name']} ({ckpt}) holds no adapter"
            )
        summary = json.loads((src / SUMMARY_FILE).read_text())
        summary.update(
            extra,
            config_digest=cfg.digest(),
            model_path=job.model_path,
            data_path=job.data_path,
            init_adapter=job.init_adapter,
            init_adapter_hash=adapter_hash(job.init_adapter),
        )
        with atomic_dir(out_dir, keep_replaced=True) as tmp:  # hours of training: kept
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            save_config(cfg, tmp / "config.yaml")
            atomic_write_text(tmp / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
    logger.info(
        "%s: adapter written to %s (step %s of %d)", job.stage, out_dir,
        summary.get("adapter_step", summary["global_step"]), summary["global_step"],
    )  # fmt: skip
    return out_dir


def new_work_dir(run_name: str, rank: int) -> Path:
    """A worker-local folder for HF Trainer checkpoints, stable across restarts of a run."""
    path = Path(tempfile.gettempdir()) / "esevo_train" / run_name / f"rank{rank}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def setup_worker_logging(rank: int) -> None:
    """Rank 0 logs progress at INFO; other ranks only warnings and errors."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    package = logging.getLogger("esevo_ray")
    package.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        package.addHandler(handler)
        package.propagate = False
    if rank != 0:
        transformers.logging.set_verbosity_error()


def check_workers(scaling: ScalingSection, stage: str) -> None:
    """Refuse at once a worker group that the live nodes of this Ray cluster cannot hold:
    Ray Train starts its workers together, each with `cpus_per_worker` CPUs (and a GPU with
    `use_gpu`) from one node, and retries a group that does not fit every minute without
    end. As for generation actors (`placement.check_cpus`), an autoscaling cluster is to be
    started with the nodes a stage needs (`min_workers`).

    Raises:
        ConfigError: naming the stage's scaling settings and the nodes' resources.
    """
    workers, cpus, gpus = scaling.num_workers, scaling.cpus_per_worker, int(scaling.use_gpu)
    nodes = node_resources()
    if fitting(cpus, gpus, nodes, workers) >= workers:
        return
    shown = "; ".join(f"{c:g} CPUs, {g:g} GPUs" for c, g in nodes) or "no nodes"
    each = f"{cpus} CPU(s)" + (" and 1 GPU" if gpus else "")
    fixes = [f"lower {stage}.scaling.num_workers"] if workers > 1 else []
    fixes.append(f"lower {stage}.scaling.cpus_per_worker")
    joining = ""
    if gpus and not any(g for _, g in nodes):
        fixes.append(f"set {stage}.scaling.use_gpu=false")
        joining = " (on a cluster just started, GPU nodes may still be joining: `ray status`)"
    raise ConfigError(
        f"{stage}: {workers} Ray Train worker(s) of {each} each do not fit this Ray cluster at "
        f"once (nodes: {shown}){joining}: {', or '.join(fixes)}, or connect to a larger cluster"
    )


def _check_cuda(scaling: ScalingSection, stage: str) -> None:
    """A GPU worker whose torch sees no CUDA device says why (`numerics.no_cuda`). Without
    this, TRL's first check says the setup lacks bf16 and advises `use_cpu`, which the
    config refuses."""
    if scaling.use_gpu and (why := no_cuda()):
        raise ConfigError(
            f"{stage}: scaling.use_gpu is true and Ray gave this worker a GPU, but {why}"
        )


def train_loop(config: dict[str, Any]) -> dict[str, Any]:
    """`train_loop_per_worker` of TorchTrainer: build the stage's trainer, resume, train."""
    import ray.train
    from transformers.trainer_callback import PrinterCallback

    from esevo_ray.training.callbacks import (
        FailureInjector,
        ProgressLogger,
        RayReportCallback,
        StopAgain,
        restore_best,
        stopped_at,
    )

    loop_start = time.time()
    rank = ray.train.get_context().get_world_rank()
    setup_worker_logging(rank)
    cfg = RunConfig.model_validate(config["cfg"])
    job = TrainJob(**config["job"])
    scaling = job.section(cfg).scaling
    _check_cuda(scaling, job.stage)
    work = new_work_dir(config["run_name"], rank)
    restored = restore(ray.train.get_checkpoint(), work)
    if restored is not None and (restored / FINAL_DIR).exists():
        logger.info("%s: the run had finished; nothing to resume", job.stage)
        summary = json.loads((restored / FINAL_DIR / SUMMARY_FILE).read_text())
        remove_work_dir(work)
        return summary
    resume = None
    if restored is not None:
        resume = str(restored / HF_DIR)
        restore_best(restored, work / "hf")

    report = RayReportCallback()
    callbacks: list[Any] = [ProgressLogger(job.stage), report]
    if scaling.inject_failure_at_step is not None and resume is None:
        callbacks.append(FailureInjector(scaling.inject_failure_at_step))
    if resume is not None and stopped_at(resume):  # killed before its final report
        callbacks.append(StopAgain())
    trainer = config["builder"](cfg, job, str(work / "hf"), callbacks)
    trainer.remove_callback(PrinterCallback)  # ProgressLogger reports instead, on rank 0 only
    numerics = {
        **describe(),
        "weights": weights_dtype(cfg.model.dtype, use_gpu=scaling.use_gpu),
        "bf16_autocast": bool(trainer.args.bf16),
        "fp16_autocast": bool(trainer.args.fp16),  # with the gradient scaler, on CUDA
    }
    logger.info("%s: numerics %s", job.stage, numerics)
    start = time.time()
    output = trainer.train(resume_from_checkpoint=resume)
    summary = summarize(job.stage, trainer, output, time.time() - start, resume)
    summary["numerics"] = numerics
    summary["phases"] = {
        "loop_start": loop_start,
        "build_s": start - loop_start,
        "train_s": summary["train_seconds"],
        "checkpoint_s": report.seconds,
    }

    with tempfile.TemporaryDirectory() as tmp:
        final = None
        if rank == 0:
            save_adapter(trainer, Path(tmp) / FINAL_DIR)
            (Path(tmp) / FINAL_DIR / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            final = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({**summary["last_metrics"], "final": 1}, checkpoint=final)
    remove_work_dir(work)
    return summary


def remove_work_dir(work: Path) -> None:
    """Remove a worker's folder (`new_work_dir`), and the run's when it is the last."""
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # the last rank to finish removes the run's folder


def restore(checkpoint: Any, work: Path) -> Path | None:
    """Copy the latest reported Ray checkpoint (if any) into the worker's folder, in place of
    the copies earlier attempts of the run made there (a run failing again and again would
    fill the disk with them)."""
    if checkpoint is None:
        return None
    for earlier in work.glob("restored-*"):
        shutil.rmtree(earlier, ignore_errors=True)
    restored = Path(checkpoint.to_directory(str(work / f"restored-{time.time_ns()}")))
    if (restored / HF_DIR).exists():
        logger.info("resuming from the checkpoint at step %d", checkpoint_step(restored / HF_DIR))
    return restored


def checkpoint_step(hf_checkpoint: str | Path) -> int:
    return json.loads((Path(hf_checkpoint) / "trainer_state.json").read_text())["global_step"]


def summarize(
    stage: str, trainer: Any, output: Any, seconds: float, resumed: str | None
) -> dict[str, Any]:
    """Steps, losses, timing and early-stopping outcome of one finished `train()`."""
    from esevo_ray.training.callbacks import best_step, latest_metrics

    state = trainer.state
    history = state.log_history
    best = best_step(state.best_model_checkpoint) if trainer.args.load_best_model_at_end else None
    losses = [[h["step"], h["eval_loss"]] for h in history if "eval_loss" in h]
    return {
        "stage": stage,
        "global_step": state.global_step,
        # The step whose weights the adapter holds: the best checkpoint's under early stopping.
        "adapter_step": best if best is not None else state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "stopped_early": state.global_step < state.max_steps,
        # transformers' mean over the steps this call ran: after a resume, those past
        # resumed_from_step only (the whole run's logged losses are in log_history).
        "train_loss": output.training_loss,
        "train_metrics": output.metrics,
        "last_metrics": latest_metrics(history),
        "eval_losses": losses,
        "best_eval_loss": min((loss for _, loss in losses), default=None),
        # What early stopping kept the best of: the eval loss, or the metric that
        # trl.metric_for_best_model names (an accuracy, say); None without early stopping.
        "best_metric": {"name": trainer.args.metric_for_best_model, "value": state.best_metric}
        if trainer.args.metric_for_best_model
        else None,
        "train_seconds": seconds,
        "world_size": trainer.args.world_size,
        "bf16": trainer.args.bf16,
        "fp16": trainer.args.fp16,
        "resumed_from_step": checkpoint_step(resumed) if resumed else None,
    }
