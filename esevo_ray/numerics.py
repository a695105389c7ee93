"""Numerics chosen for the hardware a process runs on: `dtype: auto` and `bf16: auto`.

bfloat16 pays off only where the hardware computes it natively: CUDA devices of compute
capability 8.0 and up (a T4 or V100 emulates it, and vLLM refuses it there), and CPUs with
AVX-512 BF16 or AMX tiles. Elsewhere (an AVX2-only CPU, say) bf16 is emulated and slower than
float32, so "auto" picks float32 there.

- Engines (vLLM, transformers generation, the local judge, serving) run in the resolved dtype.
- Training with "auto" keeps float32 weights on CPU and lets autocast do the bf16 math (mixed
  precision: the LoRA update accumulates in float32); on GPUs "auto" loads the weights in
  bf16. A dtype named in the config is used as it is, on any device (`model.dtype` defaults
  to bfloat16, the GPU configs' choice; cpu-demo.yaml sets "auto").

Each process resolves "auto" for itself, on the machine it runs on, and says what it chose
(`describe`), so a manifest or a train summary records it.
"""

from __future__ import annotations

from typing import Literal

Dtype = Literal["auto", "bfloat16", "float16", "float32"]


def native_bf16(on_gpu: bool) -> bool:
    """Whether this process's device computes bfloat16 natively."""
    import torch

    if on_gpu:  # compute capability 8.0 (Ampere) and up; vLLM refuses bf16 below
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False  # torch limited to other kernels (e.g. ATEN_CPU_CAPABILITY=avx2)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def no_cuda() -> str | None:
    """Why torch in this process sees no CUDA device, for a process Ray gave a GPU; None
    where it sees one. Ray counts GPUs through the driver (NVML), while torch needs a
    driver new enough for its CUDA build."""
    import torch

    if torch.cuda.is_available():
        return None
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU build'}) sees no "
        "CUDA device: an NVIDIA driver older than this CUDA build needs, or a CPU build of "
        "torch (`make venv-gpu` installs the pinned CUDA set; `nvidia-smi` shows the driver)"
    )


def engine_dtype(dtype: Dtype, device: str | None = None) -> str:
    """The dtype an inference engine in this process runs in on `device` ("cuda" or "cpu";
    None: CUDA where this process sees a device). A CPU engine in a process that sees a GPU
    (a local judge in the driver) asks the CPU, not the GPU."""
    if dtype != "auto":
        return dtype
    on_gpu = _on_gpu() if device is None else device == "cuda"
    return "bfloat16" if native_bf16(on_gpu) else "float32"


def weights_dtype(dtype: Dtype, *, use_gpu: bool) -> str:
    """The dtype trainable models load in: "auto" is bf16 on bf16 GPUs, float32 on CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if use_gpu and native_bf16(True) else "float32"


def describe() -> dict[str, object]:
    """What this process runs on, for manifests and summaries."""
    import torch

    return {
        "device": torch.cuda.get_device_name() if _on_gpu() else "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(_on_gpu()),
        "torch_threads": torch.get_num_threads(),
    }


def release_gpu_memory() -> None:
    """Give the GPU memory of models this process dropped back to the device: collect them,
    then empty torch's caching allocator, which otherwise keeps it for this process (a
    benchmark mode that ran here must not leave the next one, in a Ray worker, short)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
