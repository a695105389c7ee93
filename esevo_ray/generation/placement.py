"""Where engines run: their device, the GPUs Ray reserves per actor, and a check before start.

One rule for the generation actors (`generation.*`) and a local judge (`eval.judge.*`):

- `device: auto` is "cuda" when the Ray cluster declares GPU resources, else "cpu". The driver
  decides from the cluster, not from its own torch: a head node without a GPU still sends its
  engines to GPU workers.
- `gpus_per_actor` unset is, on "cuda", `tensor_parallel_size` for vLLM and 1 for hf; on "cpu",
  0. Ray reserves that many GPUs per actor and sets the actor's CUDA_VISIBLE_DEVICES to them,
  so two actors never share a device and no engine lands on a node without one.
- Before any actor starts, the cluster must hold all of them at once, and on "cuda" each
  actor's GPUs must hold its engine (`check_gpus`); otherwise the stage stops with a
  `PlacementError` that says what to change, instead of Ray waiting forever or the engine
  failing inside its actor.
- Inside an actor that reserved no GPU every GPU is hidden, so an engine never takes a device
  that Ray gave to another stage; an actor on "cuda" whose torch sees no device stops at once.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from esevo_ray.config import ConfigError
from esevo_ray.numerics import no_cuda
from esevo_ray.resources import fitting, node_resources

logger = logging.getLogger(__name__)


class PlacementError(ConfigError):
    """The engines cannot be placed as configured; the message names the keys to change."""


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" or "cpu": where the engine computes
    gpus: float  # GPUs Ray reserves for each actor
    tensor_parallel_size: int = 1

    def ray_options(self) -> dict[str, float]:
        """Keyword arguments for Ray (`map_batches`, `ray.remote`): the GPU request, if any."""
        return {"num_gpus": self.gpus} if self.gpus else {}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str, gpus_by_node: list[float]) -> str:
    """`device` ("auto", "cuda" or "cpu") on these nodes: auto is cuda where one has GPUs."""
    if device == "auto":
        return "cuda" if any(g > 0 for g in gpus_by_node) else "cpu"
    return device


def resolve(
    section: Any,
    engine: str,
    gpus_by_node: list[float],
    *,
    key: str = "generation",
    gpus_key: str = "gpus_per_actor",
) -> Placement:
    """The placement of one actor of `section` (generation, eval.judge, or serve, whose
    `gpus_key` is gpus_per_replica and which has no tensor parallelism) on these nodes.

    Raises:
        PlacementError: on cuda, the GPUs each actor reserves cannot hold its engine
            (`check_gpus`); the message names `key`'s settings.
    """
    device = resolve_device(section.device, gpus_by_node)
    tensor_parallel_size = getattr(section, "tensor_parallel_size", 1)
    gpus = getattr(section, gpus_key)
    if gpus is None:
        gpus = (tensor_parallel_size if engine == "vllm" else 1) if device == "cuda" else 0
    placement = Placement(device, float(gpus), tensor_parallel_size)
    check_gpus(placement, engine, getattr(section, "vllm", None), key, gpus_key)
    return placement


VLLM_GPU_MEMORY_DEFAULT = 0.92  # vLLM's gpu_memory_utilization default (vllm/config/cache.py)


def check_gpus(
    placement: Placement, engine: str, vllm: dict | None, key: str, gpus_key: str
) -> None:
    """What an engine on cuda needs of the GPUs its actor reserves. Checked once the device
    is resolved, since `device: auto` turns cuda only on a cluster with GPUs (the config's
    own checks see `device: cuda` alone).

    - at least some GPU: an actor that reserves none sees none;
    - vLLM: a GPU per tensor-parallel rank, and when actors share a GPU, each engine's
      `gpu_memory_utilization` within its share (vLLM claims that fraction of the whole
      device at start, so a second engine would find too little free).
    `vllm`: the section's extra vLLM arguments (None: it has none to set).
    """
    if placement.device != "cuda":
        return
    gpus, tp = placement.gpus, placement.tensor_parallel_size
    if not gpus:
        raise PlacementError(
            f"{key}.device resolved to cuda, but {key}.{gpus_key} is 0: an engine runs on the "
            f"GPUs Ray reserves for it, and sees none without; leave {key}.{gpus_key} unset "
            f"(a whole GPU), or set {key}.device=cpu"
        )
    if engine != "vllm":
        return
    if tp > 1 and gpus < tp:
        raise PlacementError(
            f"{key}.tensor_parallel_size {tp} needs {tp} GPUs per actor, but {key}.{gpus_key} "
            f"is {gpus:g}: set it to {tp}, or leave it unset"
        )
    share = (vllm or {}).get("gpu_memory_utilization", VLLM_GPU_MEMORY_DEFAULT)
    if gpus < 1 and share > gpus + 1e-9:
        fix = (
            f"set {key}.vllm.gpu_memory_utilization to at most {gpus:g}, or "
            if vllm is not None
            else ""
        )
        raise PlacementError(
            f"{key}.{gpus_key} {gpus:g} shares a GPU between vLLM engines, but each claims "
            f"gpu_memory_utilization {share:g} of the device's memory at start, so the next "
            f"one finds too little free: {fix}set {key}.{gpus_key}=1"
        )


def check_capacity(
    placement: Placement,
    actors: int,
    gpus_by_node: list[float],
    key: str,
    *,
    gpus_key: str = "gpus_per_actor",
    count_key: str = "num_actors",
) -> None:
    """Raise PlacementError unless the nodes hold `actors` actors of `placement` at once.

    The message names `key`'s settings: `gpus_key` (GPUs per actor) and `count_key` (actors).
    """
    if not placement.gpus:
        return
    # An actor's GPUs come from one node; the small epsilon keeps 1.0 / 0.1 at 10 actors.
    fits = sum(math.floor(g / placement.gpus + 1e-9) for g in gpus_by_node)
    if fits >= actors:
        return
    nodes = ", ".join(f"{g:g}" for g in gpus_by_node) or "no nodes"
    fixes = [f"set {key}.device=cpu (and {key}.{gpus_key}=0)"]
    if actors > 1:
        fixes.append(f"lower {key}.{count_key}")
    if placement.gpus > 1:
        fixes.append(f"lower {key}.{gpus_key}")
    raise PlacementError(
        f"{key}: {actors} engine actor(s) x {placement.gpus:g} GPU(s) each do not fit this Ray "
        f"cluster (GPUs per node: {nodes}); {', or '.join(fixes)}, or connect to a cluster "
        "with GPU nodes"
    )


def check_cpus(
    cpus: float,
    gpus: float,
    actors: int,
    nodes: list[tuple[float, float]],
    key: str,
    *,
    cpus_key: str = "cpus_per_actor",
) -> None:
    """Raise PlacementError unless some node holds one actor of `cpus` CPUs (and `gpus`
    GPUs) at once: Ray would wait for one without end (its 30-minute no-progress guard
    aside). Fewer than `actors` at once: a warning, since the others wait their turn.

    `nodes`: each live node's (CPUs, GPUs).
    """
    if not cpus:
        return
    fits = fitting(cpus, gpus, nodes, actors)
    shown = ", ".join(f"{c:g} CPUs" + (f" + {g:g} GPUs" if gpus else "") for c, g in nodes)
    if not fits:
        raise PlacementError(
            f"{key}.{cpus_key} is {cpus:g}, and no node of this Ray cluster can hold one engine "
            f"actor ({shown or 'no nodes'}): lower {key}.{cpus_key}, or connect to a cluster "
            "with larger nodes"
        )
    if fits < actors:
        logger.warning(
            "%s: %d of the %d engine actors fit this Ray cluster at once (%s, %s.%s %g); the "
            "others wait for a free node", key, fits, actors, shown, key, cpus_key, cpus,
        )  # fmt: skip


def place(
    section: Any,
    engine: str,
    actors: int,
    key: str,
    *,
    gpus_key: str = "gpus_per_actor",
    count_key: str = "num_actors",
    gpus_by_node: list[float] | None = None,
    cpus: float = 0,
    cpus_key: str = "cpus_per_actor",
) -> Placement:
    """Resolve and check the placement of `actors` engine actors on these nodes (default:
    the connected cluster's), each with `cpus` CPUs beside its GPUs (`check_cpus`); errors
    name `key`'s `gpus_key`, `count_key` and `cpus_key` settings."""
    nodes = node_resources() if gpus_by_node is None or cpus else []
    if gpus_by_node is None:
        gpus_by_node = [gpus for _, gpus in nodes]
    placement = resolve(section, engine, gpus_by_node, key=key, gpus_key=gpus_key)
    check_capacity(placement, actors, gpus_by_node, key, gpus_key=gpus_key, count_key=count_key)
    check_cpus(cpus, placement.gpus, actors, nodes, key, cpus_key=cpus_key)
    logger.info(
        "%s: %d %s engine actor(s) on %s, %g GPU(s) each", key, actors, engine, placement.device,
        placement.gpus,
    )  # fmt: skip
    if nodes:
        _say_if_waiting(cpus, placement.gpus, key)
    return placement


def _say_if_waiting(cpus: float, gpus: float, key: str) -> None:
    """Warn when the cluster has too few free CPUs or GPUs for one actor now: Ray starts it
    when other work (another job, or the stage before still letting go) frees them, and says
    nothing meanwhile. Free resources are counted over the cluster, not per node."""
    import ray

    free = ray.available_resources()
    needs = {"CPU": cpus, "GPU": gpus}
    short = [f"{n:g} {r} ({free.get(r, 0):g} free)" for r, n in needs.items() if n > free.get(r, 0)]
    if short:
        logger.warning(
            "%s: one engine actor needs %s now: it starts when other work on the cluster (another "
            "job, or the stage before still letting go) frees them", key, " and ".join(short),
        )  # fmt: skip


def enter_actor(placement: Placement, key: str) -> dict[str, Any]:
    """Call first in an engine actor: hide GPUs it did not reserve, check CUDA.

    Returns this actor's placement record (node, pid, Ray GPU ids, CUDA_VISIBLE_DEVICES,
    device), which the stage records in its manifest.
    """
    import ray

    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    if not gpu_ids:
        # Ray leaves CUDA_VISIBLE_DEVICES alone for actors without GPUs: hide them all.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    node = ray.util.get_node_ip_address()
    if placement.device == "cuda" and (why := no_cuda()):
        raise PlacementError(
            f"{key}.device resolved to cuda and Ray reserved GPUs {gpu_ids} for this actor, "
            f"but on node {node} {why}; or set {key}.device=cpu"
        )
    return {
        "node": node,
        "pid": os.getpid(),
        "gpu_ids": gpu_ids,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": placement.device,
    }
