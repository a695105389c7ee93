"""What the connected Ray cluster holds: each live node's CPUs and GPUs, and whether it grows."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def node_resources() -> list[tuple[float, float]]:
    """(CPUs, GPUs) declared by each live node of the connected Ray cluster."""
    import ray

    return [
        (float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def node_gpus() -> list[float]:
    """GPUs declared by each live node of the connected Ray cluster."""
    return [gpus for _, gpus in node_resources()]


def autoscales() -> bool:
    """Whether the connected cluster adds nodes on demand (a cluster config with node types,
    as `ray up` and KubeRay give it): what does not fit its live nodes may fit once nodes
    join. Read where Ray Train's own resource check reads it."""
    from ray._private.state import state

    try:
        return bool(state.get_max_resources_from_cluster_config())
    except Exception as e:  # a private API: without it, the live nodes are all there is
        logger.debug("cluster config unreadable (%s): taken as a fixed cluster", e)
        return False
