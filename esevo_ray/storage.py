"""The folders every node of a multi-node Ray cluster must share, checked before work starts.

On one machine every process sees the same files. On a cluster the driver runs on the head
while the work runs on the workers: engine actors load the model and adapter and write their
Parquet parts on their own node, which the driver then reads; Ray Train workers read the
stage's data and write checkpoints there, and the driver exports the adapter from the last
one. So the run's output folder must be one filesystem mounted at the same path on every
node (NFS, a ReadWriteMany volume), and the models must be there or copied alike.

`check_shared` is called by every stage that starts actors or workers, once Ray is connected.
A folder the stage writes gets a marker file with a fresh name that each node must see; a
file or folder it only reads must look the same on each node (the same file names and
sizes). On one node nothing is checked. Otherwise the stage stops with a `StorageError` that
names the path and the nodes, before any actor starts, instead of a missing-file error on one
worker later.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from esevo_ray.config import ConfigError

logger = logging.getLogger(__name__)

MARKER_PREFIX = ".shared-check-"
PROBE_TIMEOUT_S = 120.0


class StorageError(ConfigError):
    """A path the stage needs is not the same on every node of the Ray cluster."""


def job_copy() -> Path | None:
    """The working dir when it is Ray's temporary copy of a job's (`ray job submit
    --working-dir`): it holds the uploaded code, not the user's runs, data or models, and
    goes with the Ray session. None elsewhere."""
    cwd = Path.cwd()
    return cwd if any(part.startswith("_ray_pkg_") for part in cwd.parts) else None


def job_copy_hint(path: str | Path) -> str:
    """Why a relative `path` is not found in a Ray job; '' for an absolute one, or outside."""
    if Path(path).is_absolute() or (cwd := job_copy()) is None:
        return ""
    return (
        f" (a relative path in a Ray job is read in Ray's copy of its working dir, {cwd}, "
        "which holds only the uploaded code: pass an absolute path)"
    )


def signature(path: str | Path) -> list[tuple[str, int]] | None:
    """What a node sees at `path`: (relative name, size) of each file, or None if absent."""
    path = Path(path)
    if path.is_file():
        return [("", path.stat().st_size)]
    if not path.is_dir():
        return None
    return sorted(
        (str(p.relative_to(path)), p.stat().st_size)
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(MARKER_PREFIX)
    )


def _probe(paths: list[str]) -> list[list[tuple[str, int]] | None]:
    return [signature(p) for p in paths]


def check_shared(
    key: str,
    *,
    writes: Iterable[str | Path | None] = (),
    reads: Iterable[str | Path | None] = (),
) -> int:
    """Raise StorageError unless every live node sees `writes` and `reads` as the driver does.

    `writes`: folders the stage's actors or workers write into (created here if missing).
    `reads`: files or folders they read; paths absent on the driver, or None, are skipped
    (the stage reports those itself). Returns the number of nodes checked.

    Raises:
        StorageError: a node sees another file or folder, or none, at one of the paths; or a
            node did not answer within PROBE_TIMEOUT_S.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return len(nodes)
    markers = []
    try:
        for folder in dict.fromkeys(Path(w).resolve() for w in writes if w is not None):
            folder.mkdir(parents=True, exist_ok=True)
            markers.append(folder / f"{MARKER_PREFIX}{uuid.uuid4().hex}")
            markers[-1].touch()
        read = [Path(r).resolve() for r in reads if r is not None and os.path.exists(r)]
        paths = [*markers, *dict.fromkeys(read)]
        names = [str(p) for p in paths]
        expected = _probe(names)
        probe = ray.remote(num_cpus=0)(_probe)
        pending = {
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(names): n
            for n in nodes
        }
        ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=PROBE_TIMEOUT_S)
        problems = {}
        for ref in ready:
            for path, want, got in zip(paths, expected, ray.get(ref), strict=True):
                if got != want:
                    problems.setdefault(path, []).append(_node_name(pending[ref]))
        for ref in late:
            ray.cancel(ref, force=True)
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)
    if problems or late:
        raise StorageError(_message(key, len(nodes), problems, [pending[r] for r in late]))
    logger.info("%s: %d path(s) shared by all %d nodes", key, len(paths), len(nodes))
    return len(nodes)


def _node_name(node: dict) -> str:
    return f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})"


def _message(key: str, n_nodes: int, problems: dict, late: list[dict]) -> str:
    lines = [f"{key}: every node of the Ray cluster ({n_nodes} nodes) must see the same files:"]
    for path, names in problems.items():
        if path.name.startswith(MARKER_PREFIX):
            lines.append(f"  {path.parent}: written here, but not seen by {', '.join(names)}")
        else:
            lines.append(f"  {path}: read here, but missing or different on {', '.join(names)}")
    for node in late:
        lines.append(f"  {_node_name(node)} did not answer within {PROBE_TIMEOUT_S:.0f}s")
    lines.append(
        "Mount one shared filesystem (NFS, a ReadWriteMany volume) at the same path on every "
        "node and set output_dir to a folder on it (the cluster/ recipes mount one at /runs); "
        "model folders must be on it too, or copied to every node."
    )
    return "\n".join(lines)
