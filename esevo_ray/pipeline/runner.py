"""Runs the loop's stages in order, each recorded in the run manifest, finished ones reused.

A finished stage is reused only while its inputs are what it read: when it finishes, the
manifest records a fingerprint of each input (a file's bytes, a LoRA adapter's weights, a
stage folder's data files, a model folder's configuration and tokenizer) and of the config
settings it reads. A stage whose input changed since (an upstream stage run again, an
adapter retrained by `esevo dpo`, a base model converted again) runs again, and through
their inputs so do the stages built on it, while unrelated ones stay reused. Before it runs
again, its folder (or its output files) is moved aside to `<name>.stale-<time>`: its
resumable parts hold rows of the old inputs, and nothing is deleted; a stage that reconciles
its own outputs (the judge) finds them in place. The same holds for a stage stopped
part-way: the manifest records its inputs' fingerprints when it starts, and it resumes only
on those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from esevo_ray import profile
from esevo_ray.io import files_digest, set_aside
from esevo_ray.layout import is_adapter
from esevo_ray.models import adapter_hash, is_model_folder, model_fingerprint
from esevo_ray.pipeline.manifest import Manifest

logger = logging.getLogger(__name__)


def fingerprint(path: Path) -> str | None:
    """What a stage reads at `path`, as a content hash; None for a missing path or a folder
    that is neither an adapter, a model folder nor a finished stage folder.

    A stage folder is its data files (the Parquet parts), not its manifest, which also
    records how long the stage took and where it ran: a folder written again with the same
    rows is the same input (a folder holding nothing but its manifest is that file). A model
    folder is `model_fingerprint`. An SQLite file includes its write-ahead log, where recent
    rows wait.
    """
    if is_adapter(path):
        return adapter_hash(path)
    if path.is_dir():
        manifest = path / "manifest.json"
        if not manifest.is_file():
            return model_fingerprint(path) if is_model_folder(path) else None
        data = [f for f in path.iterdir() if f.is_file() and f != manifest and f.name[0] != "."]
        return files_digest(sorted(data), named=True) if data else legacy_fingerprint(path)
    if not path.is_file():
        return None
    wal = path.with_name(f"{path.name}-wal")
    return files_digest([path, wal] if wal.is_file() else [path])


def legacy_fingerprint(path: Path) -> str | None:
    """The fingerprint a manifest recorded for a stage folder before folders were read by
    their data files: the hash of its manifest.json alone."""
    manifest = path / "manifest.json"
    return files_digest([manifest]) if manifest.is_file() else None


def move_aside(paths: list[Path]) -> list[str]:
    """Rename each existing path to `<name>.stale-<UTC time>` beside it; the new names."""
    return [str(set_aside(path, "stale")) for path in paths if path.exists()]


class Runner:
    """Runs stages in order, recording each in the manifest and skipping finished ones."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.timings: dict[str, float] = {}

    def stage(
        self,
        name: str,
        *,
        inputs: dict[str, Path],
        outputs: dict[str, Path],
        fn: Callable[[], dict | None],
        folder: Path | None = None,
        settings: dict | None = None,
        current: Callable[[], bool] | None = None,
        reconciles: bool = False,
    ) -> None:
        """Run `fn` as stage `name`, unless it finished on the same inputs.

        `folder`: where the stage writes (its outputs and any resumable parts); a stage run
        again on changed inputs moves it aside first, or its output files when there is none.
        `settings`: the config values it reads that a run may change (manifest.FREE_KEYS), by
        their dotted keys, taken as one more input (`settings`, by their hash), so that changed
        ones run it again. A stage recorded before it was given settings runs again when one
        of them is among the keys changed as the run was opened since it was recorded
        (`Manifest.changed_since`).
        `current()`: False when its outputs were rewritten since it ran, by other means than
        the stage (a command run alone with other settings): it runs again, and is left to
        reconcile what it finds. `reconciles`: the stage keeps what of its earlier outputs
        still holds and moves aside the rest itself (the judge: verdicts of the same judge
        and settings), so they are not moved aside before it runs again.
        """
        fingerprints = _fingerprints(inputs)
        if settings is not None:
            fingerprints[SETTINGS] = settings_digest(settings)
        legacy = self._legacy_models(name, inputs, fingerprints)
        if self.manifest.done(name, outputs):
            changed = self._changed(name, inputs, fingerprints, settings, legacy)
            if changed:
                self._retire(name, changed, folder, outputs, "since it ran", reconciles)
            elif current is not None and not current():
                logger.warning(
                    "stage %s: %s rewritten since it ran, not as this config makes it; running "
                    "it again", name, ", ".join(map(str, outputs.values())),
                )  # fmt: skip
            else:
                reused = ", ".join(map(str, outputs.values()))
                logger.info("stage %s: done, reusing %s", name, reused)
                # An input added since the stage ran (an older manifest), or a model folder
                # recorded before model folders had fingerprints, is taken as it is now, so
                # that a later change to it is seen.
                self.manifest.adopt_inputs(name, fingerprints, replace=legacy)
                return
        elif self.manifest.stopped(name) and (
            changed := self._changed(name, inputs, fingerprints, settings, legacy)
        ):  # its resumable parts hold rows made from the old inputs
            self._retire(name, changed, folder, outputs, "since it started", reconciles)
        logger.info("stage %s: start", name)
        self.manifest.outdate_dependents(name, [*outputs.values(), *([folder] if folder else [])])
        self.manifest.start(name, {k: str(v) for k, v in inputs.items()}, fingerprints)
        t0 = time.perf_counter()
        try:
            with profile.collect() as timings:
                info = fn() or {}
        except BaseException as e:
            self.manifest.fail(name, f"{type(e).__name__}: {e}")
            raise
        wall = time.perf_counter() - t0
        self.timings[name] = round(wall, 1)
        outputs_ = {k: str(v) for k, v in outputs.items()}
        breakdown = profile.breakdown(timings, wall)
        # What the stage read is what was there when it started; an input that did not exist
        # then (None) is read again now. One changed meanwhile (retrained in another shell)
        # is not recorded as read: the next run sees the change.
        read = {  # (settings are never None)
            k: fingerprint(Path(inputs[k])) if v is None else v for k, v in fingerprints.items()
        }
        self.manifest.finish(
            name, outputs_, {**info, "seconds": round(wall, 1), "profile": breakdown},
            fingerprints=read,
        )  # fmt: skip
        logger.info("stage %s: done in %.1fs (%s)", name, wall,
                    ", ".join(f"{k} {v:.1f}s" for k, v in breakdown.items()))  # fmt: skip

    def _changed(
        self,
        name: str,
        inputs: dict[str, Path],
        fingerprints: dict[str, str | None],
        settings: dict | None = None,
        legacy: list[str] = (),
    ) -> list[str]:
        """The inputs of `name` that changed since it ran; a folder recorded the old way (by
        its manifest.json) is unchanged while that file is, a model folder recorded without
        a fingerprint (`legacy`) is unchanged, and settings recorded the old way (not at all)
        while none of their keys changed as the run was opened since."""
        recorded = self.manifest.data["stages"].get(name, {}).get("input_fingerprints", {})
        changed = [
            k
            for k in self.manifest.changed_inputs(name, fingerprints)
            if k not in legacy
            and (
                k not in inputs  # the settings
                or not (
                    Path(inputs[k]).is_dir() and recorded[k] == legacy_fingerprint(Path(inputs[k]))
                )
            )
        ]
        if (
            settings is not None
            and SETTINGS not in recorded
            and _touched(settings, self.manifest.changed_since(name))
        ):
            changed.append(SETTINGS)
        return changed

    def _legacy_models(
        self, name: str, inputs: dict[str, Path], fingerprints: dict[str, str | None]
    ) -> list[str]:
        """The model-folder inputs of `name` recorded without a fingerprint (before model
        folders had one): taken as they are now, with a warning, since a change before now
        cannot be told."""
        recorded = self.manifest.data["stages"].get(name, {}).get("input_fingerprints", {})
        legacy = [
            k
            for k, v in fingerprints.items()
            if k in recorded and recorded[k] is None and v is not None
            and k in inputs and is_model_folder(Path(inputs[k]))
        ]  # fmt: skip
        for k in legacy:
            logger.warning(
                "stage %s: its input %s (%s) was recorded before model folders had "
                "fingerprints: taken as it is now (a change to it before now is not seen)",
                name, k, inputs[k],
            )  # fmt: skip
        return legacy

    def _retire(
        self,
        name: str,
        changed: list[str],
        folder: Path | None,
        outputs: dict,
        when: str,
        reconciles: bool = False,
    ) -> None:
        """Move a stage's old outputs aside before it runs again on changed inputs (unless
        it `reconciles` them itself)."""
        moved = [] if reconciles else move_aside([folder] if folder else list(outputs.values()))
        logger.warning(
            "stage %s: its input %s changed %s; running it again (old outputs %s)",
            name, ", ".join(changed), when,
            "left to it" if reconciles else f"moved to {', '.join(moved) or 'nowhere'}",
        )  # fmt: skip
        self.manifest.retire(name, changed, moved)


SETTINGS = "settings"  # the input name of a stage's settings


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _touched(settings: dict, changed: list[str]) -> bool:
    """Is a dotted key of `settings` among `changed`, inside one or holding one?"""
    return any(
        key == c or key.startswith(f"{c}.") or c.startswith(f"{key}.")
        for key in settings
        for c in changed
    )


def _fingerprints(inputs: dict[str, Path]) -> dict[str, str | None]:
    return {k: fingerprint(Path(v)) for k, v in inputs.items()}
