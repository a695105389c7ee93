"""The name of a stage's Ray Train run: what it trains decides it, and nothing else."""

from __future__ import annotations

from esevo_ray.io import write_parquet
from esevo_ray.models import build_tiny_adapter
from esevo_ray.training.common import TrainJob
from esevo_ray.training.raytrain import SNAPSHOT, run_name, set_aside_unresumable, unresumable
from esevo_ray.training.sft import sft_job
from tests.training.tables import sft_table


def test_a_stage_on_the_same_inputs_is_the_same_run(make_cfg, sft_dir, tiny_model, tmp_path):
    cfg = make_cfg()
    job, out = sft_job(cfg, sft_dir), tmp_path / "m0" / "adapter"
    name = run_name(cfg, job, out)
    assert name.startswith(f"{cfg.name}-sft-") and name == run_name(make_cfg(), job, out)
    # How the run is carried out does not change what it trains: it resumes under them.
    for how in ("sft.scaling.max_failures=2", "sft.scaling.inject_failure_at_step=3",
                "sft.logging_steps=7", "sft.scaling.cpus_per_worker=2",
                "dpo.learning_rate=0.5"):  # fmt: skip
        assert run_name(make_cfg(how), job, out) == name, how
    # What it trains does (a setting, the dtype, the data's bytes, the init adapter), and so
    # does the folder it writes (another run directory is another run).
    others = {run_name(make_cfg(o), job, out) for o in ("sft.learning_rate=0.5",
              "model.dtype=auto", "sft.scaling.num_workers=2")}  # fmt: skip
    others.add(run_name(cfg, job, tmp_path / "other" / "m0" / "adapter"))
    adapter = build_tiny_adapter(tiny_model, tmp_path / "init")
    others.add(run_name(cfg, TrainJob("sft", job.model_path, job.data_path, str(adapter)), out))
    write_parquet(sft_table(5), sft_dir / "sft.parquet")
    others.add(run_name(cfg, job, out))
    assert name not in others and len(others) == 6


def test_a_base_model_converted_again_in_place_is_another_run(make_cfg, sft_dir, tiny_model,
                                                              tmp_path):  # fmt: skip
    """The stage trains again on it (its fingerprint changed): resuming the run trained on the
    model that was there before would bring back that model's adapter and optimizer state."""
    import dataclasses
    import shutil

    cfg, out = make_cfg(), tmp_path / "m0" / "adapter"
    model = shutil.copytree(tiny_model, tmp_path / "model")
    job = dataclasses.replace(sft_job(cfg, sft_dir), model_path=str(model))
    name = run_name(cfg, job, out)
    config = model / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"model_max_length": 4096, ', 1))
    assert run_name(cfg, job, out) != name


def test_a_run_folder_ray_cannot_resume_is_set_aside(tmp_path, caplog):
    """Ray refuses a damaged run folder for good, and the name is fixed by the inputs: it
    is moved aside (not deleted) and the stage trains afresh."""
    import json

    import ray

    run = tmp_path / "t-sft-abc"
    run.mkdir()
    assert unresumable(run) is None  # nothing to resume: a fresh run
    (run / "checkpoint_2026-12-06_10-00-00.000000").mkdir()
    state = {"ray_version": ray.__version__,
             "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_2026-12-06_10-00-00.000000"}]}  # fmt: skip
    (run / SNAPSHOT).write_text(json.dumps(state))
    assert unresumable(run) is None
    state["checkpoint_results"].append({"checkpoint_dir_name": "checkpoint_gone"})
    (run / SNAPSHOT).write_text(json.dumps(state))
    assert unresumable(run) == "its checkpoint checkpoint_gone is gone"
    (run / SNAPSHOT).write_text(json.dumps({**state, "ray_version": "2.0.0"}))
    assert "written by Ray 2.0.0" in unresumable(run)
    (run / SNAPSHOT).write_text("")  # killed while Ray wrote it
    assert "unreadable" in unresumable(run)
    set_aside_unresumable(run, "sft")
    assert not run.exists() and [p.name.split(".")[1][:11] for p in tmp_path.iterdir()] == [
        "unresumable"
    ]


def test_a_worker_out_of_gpu_memory_is_said_with_the_settings_that_decide_it():
    import torch
    from ray.train import WorkerGroupError

    from esevo_ray.config import ConfigError
    from esevo_ray.training.raytrain import user_error

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore")
    said = user_error(WorkerGroupError("rank 1: oom", {1: oom}), "dpo")
    assert isinstance(said, ConfigError)
    assert "dpo: worker 1 ran out of GPU memory (CUDA out of memory. Tried" in str(said)
    assert "dpo.per_device_batch_size" in str(said) and "more" not in str(said)
    # Any other worker failure keeps Ray Train's error and traceback.
    assert user_error(WorkerGroupError("rank 0", {0: RuntimeError("boom")}), "dpo") is None


def test_a_restart_replaces_the_checkpoint_copies_of_earlier_attempts(tmp_path):
    """Each attempt of a run copies its last checkpoint into the worker's folder: a run that
    fails again and again kept every copy (optimizer state included) until it succeeded."""
    from ray.train import Checkpoint

    from esevo_ray.training.raytrain import restore

    saved = tmp_path / "checkpoint"
    (saved / "hf").mkdir(parents=True)
    (saved / "hf" / "optimizer.pt").write_bytes(b"x" * 1000)
    work = tmp_path / "work"
    work.mkdir()
    copies = [restore(Checkpoint.from_directory(str(saved)), work) for _ in range(3)]
    assert sorted(work.glob("restored-*")) == [copies[-1]]
    assert (copies[-1] / "hf" / "optimizer.pt").read_bytes() == b"x" * 1000
    assert restore(None, work) is None


def test_a_worker_group_the_cluster_cannot_hold_is_refused_at_once(ray_local, make_cfg):
    """Ray Train starts its workers together and retries a group that does not fit every
    minute without end; the tests' cluster has 2 CPUs and no GPU."""
    import pytest

    from esevo_ray.config import ConfigError
    from esevo_ray.training.raytrain import check_workers

    check_workers(make_cfg("sft.scaling.cpus_per_worker=2").sft.scaling, "sft")
    check_workers(make_cfg("sft.scaling.num_workers=2").sft.scaling, "sft")
    big = make_cfg("sft.scaling.num_workers=2", "sft.scaling.cpus_per_worker=2").sft.scaling
    with pytest.raises(ConfigError, match=r"sft: 2 Ray Train worker\(s\) of 2 CPU\(s\) each do not "
                       r"fit this Ray cluster at once \(nodes: 2 CPUs, 0 GPUs\): lower "
                       r"sft.scaling.num_workers, or lower sft.scaling.cpus_per_worker"):  # fmt: skip
        check_workers(big, "sft")
    gpu = make_cfg("dpo.scaling.use_gpu=true").dpo.scaling
    with pytest.raises(ConfigError, match=r"of 1 CPU\(s\) and 1 GPU each .* or set "
                       r"dpo.scaling.use_gpu=false, or connect to a larger cluster"):  # fmt: skip
        check_workers(gpu, "dpo")


def test_a_gpu_worker_whose_torch_sees_no_cuda_says_so(make_cfg, monkeypatch):
    """An NVIDIA driver too old for torch's CUDA build: Ray still counts the GPU (NVML), and
    TRL then said the setup lacks bf16 and advised use_cpu, which the config refuses."""
    import pytest
    import torch

    from esevo_ray.config import ConfigError
    from esevo_ray.training.raytrain import _check_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _check_cuda(make_cfg().sft.scaling, "sft")  # a CPU worker needs none
    with pytest.raises(ConfigError, match=r"sft: scaling.use_gpu is true .* sees no CUDA device: "
                       r"an NVIDIA driver older"):  # fmt: skip
        _check_cuda(make_cfg("sft.scaling.use_gpu=true").sft.scaling, "sft")
