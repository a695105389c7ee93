"""`esevo bench train`: steady-state DPO throughput, in-process and under Ray Train."""

from __future__ import annotations

import json

import pytest
import yaml

from esevo_ray.cli import main
from esevo_ray.io import write_parquet
from esevo_ray.training.bench import steady_state
from tests.training.tables import pairs_table


def test_steady_state_drops_warmup_steps():
    run = {
        "marks": [(0.0, 1, 100.0), (10.0, 2, 200.0), (12.0, 3, 300.0), (14.0, 4, 400.0)],
        "pairs_per_step": 4,
        "world_size": 1,
        "started": -3.0,
    }
    got = steady_state(run, warmup=2)
    assert got["steps"] == 2 and got["seconds"] == 4.0
    assert got["startup_s"] == 3.0  # to step 1's log, not to the end of the warm-up
    assert got["pairs_per_s"] == 2.0 and got["tokens_per_s"] == 50.0
    with pytest.raises(ValueError, match="warm-up"):
        steady_state(run, warmup=4)


def test_start_up_is_the_wall_time_outside_the_steps_at_their_steady_pace(monkeypatch):
    """Ray's overhead was wall(ray) - wall(plain), which also counted Ray's slower steps as
    start-up; and the plain process trained on every core where a Ray worker gets its CPUs."""
    import time

    import torch

    from esevo_ray.config import load_config
    from esevo_ray.training import bench

    run = {"marks": [(0.0, 1, 0.0), (2.0, 2, 10.0), (4.0, 3, 20.0), (6.0, 4, 30.0)],
           "pairs_per_step": 2, "world_size": 1, "started": -1.0}  # fmt: skip
    walled = bench._walled(steady_state(run, warmup=1), time.perf_counter() - 20.0)
    assert walled["outside_steps_s"] == pytest.approx(20.0 - 4 * 2.0, abs=0.5)

    threads = []
    monkeypatch.setattr(
        bench, "timed_train", lambda *a: threads.append(torch.get_num_threads()) or run
    )
    before = torch.get_num_threads()
    cfg = load_config(None, ["dpo.scaling.cpus_per_worker=1"])
    bench._plain(cfg, None, "", warmup=1)
    assert threads == [1] and torch.get_num_threads() == before


@pytest.mark.slow
def test_bench_train_reports_both_modes(ray_local, tiny_model, tmp_path):
    pairs = write_parquet(pairs_table(), tmp_path / "pairs.parquet")
    config = {
        "model": {"path": str(tiny_model), "dtype": "float32"},
        "dpo": {
            "per_device_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_length": 640,
            "learning_rate": 1e-3,
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    argv = ["bench", "train", "--config", str(tmp_path / "run.yaml"), "--pairs", str(pairs)]
    argv += [
        "--steps",
        "3",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--out",
        str(tmp_path / "bench.json"),
    ]
    assert main(argv) == 0  # the entry point of jobs/train.py
    report = json.loads((tmp_path / "bench.json").read_text())
    for mode in ("plain", "ray_train"):
        assert report[mode]["steps"] == 3 and report[mode]["world_size"] == 1
        assert report[mode]["pairs_per_s"] > 0 and report[mode]["tokens_per_s"] > 0
        assert 0 < report[mode]["startup_s"] < report[mode]["wall_s"]
        assert 0 < report[mode]["outside_steps_s"] < report[mode]["wall_s"]
    assert "ray_startup_overhead_s" in report


def test_bench_lm_head_times_both_heads_in_process(tiny_model, tmp_path):
    pairs = write_parquet(pairs_table(), tmp_path / "pairs.parquet")
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump({"model": {"path": str(tiny_model), "dtype": "float32"}})
    )
    argv = ["bench", "train", "--config", str(tmp_path / "run.yaml"), "--pairs", str(pairs)]
    argv += ["--compare", "lm-head", "--steps", "2", "--warmup", "1", "--repeats", "1"]
    argv += ["--out", str(tmp_path / "bench.json"), "dpo.per_device_batch_size=2"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    for mode in ("every_position", "labelled"):
        assert report[mode]["steps"] == 2 and report[mode]["tokens_per_s"] > 0
        assert len(report["runs"][mode]) == 1
    assert report["labelled_over_every_position_pairs_per_s"] > 0
