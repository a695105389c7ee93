"""What the connected Ray cluster holds: each live node's CPUs and GPUs."""

from __future__ import annotations


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
