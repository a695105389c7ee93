"""Where a stage's time goes: start-up, compute and I/O.

Work runs in Ray actors and Ray Train workers, so each measures its own phases and sends the
seconds back with its results; the driver adds them to the stage being run (`collect`), and
the loop keeps the breakdown in the manifest and prints it at the end.

- startup: Ray workers and actors coming up, imports, model load, engine build;
- compute: generation, training steps, scoring;
- io: reading inputs, writing Parquet parts, checkpoints and adapters.
Whatever a stage's wall time holds beyond these is reported as `other`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

PHASES = ("startup", "compute", "io")

_collectors: list[dict[str, float]] = []


@contextlib.contextmanager
def collect() -> Iterator[dict[str, float]]:
    """Gather every `record` made on this driver while the block runs."""
    timings = dict.fromkeys(PHASES, 0.0)
    _collectors.append(timings)
    try:
        yield timings
    finally:
        _collectors.remove(timings)


def record(phase: str, seconds: float) -> None:
    """Add `seconds` of `phase` to the stage being collected (a no-op outside one)."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; known: {PHASES}")
    for timings in _collectors:
        timings[phase] += max(0.0, seconds)


@contextlib.contextmanager
def timed(phase: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record(phase, time.perf_counter() - t0)


def breakdown(timings: dict[str, float], wall: float) -> dict[str, float]:
    """The phases rounded to 0.1 s, plus `other`: the wall time no phase accounts for."""
    out = {p: round(timings.get(p, 0.0), 1) for p in PHASES}
    out["other"] = round(max(0.0, wall - sum(timings.get(p, 0.0) for p in PHASES)), 1)
    return out


def table(stages: dict[str, dict]) -> str:
    """A Markdown table of the stages' seconds and their breakdowns (manifest entries)."""
    lines = [
        "| stage | seconds | startup | compute | io | other |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    total = dict.fromkeys(("seconds", *PHASES, "other"), 0.0)
    for name, entry in stages.items():
        if "seconds" not in entry:
            continue
        prof = entry.get("profile") or {}
        row = {"seconds": entry["seconds"], **{k: prof.get(k, 0.0) for k in (*PHASES, "other")}}
        for k, v in row.items():
            total[k] += v
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.1f}" for k in total) + " |")
    lines.append("| **total** | " + " | ".join(f"**{v:.1f}**" for v in total.values()) + " |")
    return "\n".join(lines)
