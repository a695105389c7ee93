"""Check the GPU environment `make venv-gpu` installed: a CUDA build of torch, and a driver
that build can use wherever `nvidia-smi` lists GPUs (Ray counts GPUs through the driver, so
a driver too old for torch's CUDA build would pass for a GPU machine and fail in training)."""

from __future__ import annotations

import shutil
import subprocess
import sys


def listed_gpus() -> int:
    """GPUs that `nvidia-smi -L` lists; 0 without nvidia-smi (a machine without a GPU)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines())


def main() -> int:
    import ray
    import torch
    import vllm

    if not torch.version.cuda:
        print(f"torch {torch.__version__} is not a CUDA build", file=sys.stderr)
        return 1
    listed, visible = listed_gpus(), torch.cuda.device_count()
    if listed and not visible:
        print(
            f"nvidia-smi lists {listed} GPU(s), but torch {torch.__version__} (CUDA "
            f"{torch.version.cuda}) sees none: the NVIDIA driver is older than this CUDA build "
            "needs (R580 or newer; `nvidia-smi` shows the driver version)",
            file=sys.stderr,
        )
        return 1
    print(
        f"environment ok: torch {torch.__version__} CUDA {torch.version.cuda}, vllm "
        f"{vllm.__version__}, ray {ray.__version__}, GPUs visible: {visible}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
