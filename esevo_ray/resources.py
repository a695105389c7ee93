"""What the connected Ray cluster holds: each live node's CPUs and GPUs."""

from __future__ import annotations

import math


def node_resources() -> list[tuple[float, float]]:
    """(CPUs, GPUs) declared by each live node of the Ray cluster (joined or started here)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    return [
        (float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def node_gpus() -> list[float]:
    """GPUs declared by each live node of the connected Ray cluster."""
    return [gpus for _, gpus in node_resources()]


def fitting(cpus: float, gpus: float, nodes: list[tuple[float, float]], most: int) -> int:
    """How many tasks of `cpus` CPUs and `gpus` GPUs each `nodes` ((CPUs, GPUs) each) hold at
    once, each on one node; `most` where a task asks for neither."""

    def fit(have: float, need: float) -> int:
        # the small epsilon keeps 1.0 / 0.1 at 10
        return math.floor(have / need + 1e-9) if need else most

    return sum(min(fit(c, cpus), fit(g, gpus)) for c, g in nodes)
