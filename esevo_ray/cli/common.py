"""What every `esevo` subcommand shares: config arguments, the run layout, path checks."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import time
from pathlib import Path

# Everything runs offline: no code path may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

from esevo_ray.config import ConfigError, RunConfig, load_config  # noqa: E402
from esevo_ray.data.dialogue import DataError  # noqa: E402
from esevo_ray.errors import BenchUnavailable, EndpointError, JudgeError, UsageError  # noqa: E402
from esevo_ray.layout import RunLayout, is_adapter  # noqa: E402
from esevo_ray.parts import PartsConflict  # noqa: E402
from esevo_ray.pipeline.manifest import RunConflict, recorded, run_lock  # noqa: E402
from esevo_ray.schema import SchemaError  # noqa: E402
from esevo_ray.storage import job_copy, job_copy_hint  # noqa: E402

logger = logging.getLogger(__name__)

# Errors in what the user gave: one line on stderr, exit status 2. Any other exception is a
# bug and keeps its traceback.
USER_ERRORS = (
    ConfigError, DataError, SchemaError, RunConflict, UsageError, FileNotFoundError,
    FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, EndpointError,
    JudgeError, BenchUnavailable, PartsConflict,
)  # fmt: skip


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="YAML run config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. dpo.beta=0.1")


def command_group(sub: argparse._SubParsersAction, name: str, help: str):
    """`esevo <name> <subcommand>`: a command whose subcommands are added to the result."""
    return sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", required=True)


def load_args_config(args: argparse.Namespace) -> RunConfig:
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "on_bad_record", None):
        overrides.append(f"data.on_bad_record={args.on_bad_record}")
    return load_config(getattr(args, "config", None), overrides)


def check_output_dir(cfg: RunConfig) -> None:
    """Refuse a relative output_dir in a Ray job: its working dir is Ray's temporary copy.

    Raises:
        ConfigError: the run would be written into that copy, and lost with the session.
    """
    _check_job_path(cfg.output_dir, "output_dir", "the run", "output_dir=/runs")


def _check_job_path(path: str | Path, name: str, what: str, example: str) -> None:
    if not Path(path).is_absolute() and (cwd := job_copy()) is not None:
        raise ConfigError(
            f"{name} {str(path)!r} is relative, and this job runs in Ray's temporary copy of "
            f"its working dir ({cwd}): {what} would be lost with the Ray session; pass an "
            f"absolute one, e.g. {example} (a folder every node mounts)"
        )


def add_new_run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--new-run", action="store_true",
        help="start new run directories (<name>-<time>) instead of continuing the config's",
    )  # fmt: skip


def loop_config(args: argparse.Namespace) -> RunConfig:
    """The config of a command that runs the loop (evolve, baselines, ablate pairs-table):
    its output_dir checked, and a new run name (<name>-<time>) with --new-run."""
    cfg = load_args_config(args)
    check_output_dir(cfg)
    if args.new_run:
        cfg = cfg.model_copy(update={"name": f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"})
        # The same command again would start yet another run: this one goes on by its name.
        args.go_on = f"the same command without --new-run, with name={cfg.name},"
        logger.info("new run %s (go on with it: name=%s, without --new-run)", cfg.name, cfg.name)
    return cfg


def run_of(args: argparse.Namespace, *, writes: bool) -> tuple[RunConfig, RunLayout]:
    """The config a stage command was given and the run directory it works in; with
    `writes`, the command's output (--out, else the run's own folder) is claimed
    (`claim_run`) before an old layout is migrated, as `esevo evolve` locks before it does."""
    cfg = load_args_config(args)
    check_output_dir(cfg)
    layout = RunLayout.of(cfg)
    if writes:
        claim_run(args, cfg, layout, getattr(args, "out", None))
    layout.migrate()
    return cfg, layout


def claim_run(
    args: argparse.Namespace, cfg: RunConfig, layout: RunLayout, out: str | Path | None
) -> None:
    """A command that writes `out` (None: the run's own folder) inside the run of `cfg`
    holds the run for the rest of the command, as `esevo evolve` does, and must have the
    run's config (FREE_KEYS aside): an output made with other settings would pass for the
    run's, and evolve would build on it. The same holds for an `out` inside another run
    (a folder above it holds a run manifest); any other `out` is the user's own.

    Raises:
        RunConflict: the run was made by another config, or another process holds it.
        ConfigError: a relative `out` in a Ray job (see `check_output_dir`).
    """
    if out is not None:
        _check_job_path(out, "--out", "the output", "--out /runs/mine")
    root = layout.root.resolve()
    if out is not None and not Path(out).resolve().is_relative_to(root):
        root = run_holding(Path(out).resolve())
        if root is None:
            return
    held = getattr(args, "held", None)  # main()'s: released when the command ends
    if held is not None:
        held.enter_context(run_lock(root))
    recorded(root, cfg, remedy="pass --out to write elsewhere, or restore its config")


def run_holding(path: Path) -> Path | None:
    """The run folder that `path` is in (the nearest folder above it, or itself, holding a
    run's manifest.json), None when it is in none. A stage folder's manifest (data, pairs)
    is no run manifest: it has no "stages"."""
    for folder in (path, *path.parents):
        try:
            data = json.loads((folder / "manifest.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("stages"), dict):
            return folder
    return None


def positive_list(text: str) -> tuple[int, ...]:
    """argparse type of several counts, comma-separated ("1,8,32"): nargs="+" would swallow
    the key=value overrides after them."""
    return tuple(positive(part) for part in text.split(","))


def positive(text: str, why: str = "") -> int:
    """argparse type of a count (clients, repeats, steps, requests in flight): 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more{why}, got {value}")
    return value


def seconds(text: str) -> float:
    """argparse type of a duration in seconds: more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def iteration(text: str) -> int:
    """argparse type of --iteration: t >= 1 (pairs and DPO make m<t> from m<t-1>)."""
    return positive(text, " (m<t> is trained from m<t-1>)")


def existing(
    path: str | Path | None, flag: str, what: str, hint: str = "", *, folder: bool = False
) -> Path:
    """`path` as a Path, or a UsageError naming `flag` when it does not exist (or, with
    `folder`, is not a folder)."""
    if path is None or not Path(path).exists():
        where = job_copy_hint(path) if path is not None else ""
        raise UsageError(f"{flag} {path}: no {what} there{where}{'; ' + hint if hint else ''}")
    if folder and not Path(path).is_dir():
        raise UsageError(f"{flag} {path}: a file, not a {what}")
    return Path(path)


def same_run(args: argparse.Namespace, command: str) -> str:
    """`esevo <command>` for the run `args` name: its --config and overrides, quoted."""
    words = ["esevo", *command.split(), "--config", str(args.config)]
    return shlex.join([*words, *(getattr(args, "overrides", None) or [])])


def stage_input(
    args: argparse.Namespace, given: str | None, default: Path, flag: str, what: str, maker: str
) -> Path:
    """A stage's input: `given` (the user's `flag`) or the run's `default`, which must exist.

    A missing default names the command that makes it for this run (`maker`, with this
    command's config and overrides) or `flag`; a missing given path is the user's alone.
    """
    if given:
        return existing(given, flag, what)
    return existing(default, flag, what, f"run `{same_run(args, maker)}` or pass {flag}")


def base_before(cfg: RunConfig, layout: RunLayout, t: int) -> bool:
    """Whether M^{t-1}, which makes iteration t's pairs and starts its DPO, is the base model
    itself: M0 under evolve.init: base (before `esevo evolve` marks it so), or a marked one."""
    return (t == 1 and cfg.evolve.init == "base") or layout.is_base(t - 1)


def adapter_arg(path: str | Path | None, flag: str = "--adapter") -> Path | None:
    """A LoRA adapter folder given on the command line, checked before any work starts."""
    if path is None:
        return None
    folder = existing(path, flag, "adapter folder")
    if not is_adapter(folder):
        raise UsageError(
            f"{flag} {folder}: not a LoRA adapter folder (want adapter_config.json and "
            "adapter_model.safetensors, as `esevo sft` / `esevo dpo` write)"
        )
    return folder


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Ray Data logs every execution plan and operator; the pipeline logs its own progress.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
