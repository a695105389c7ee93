"""The whole loop on the tiny model: stopped during generation and during training, resumed."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from esevo_ray.parts import PART_GLOB

TIMEOUT = 600


@pytest.fixture
def config(tmp_path, tiny_model, data_root):
    cfg = {
        "name": "tiny-evolve",
        "output_dir": str(tmp_path / "runs"),
        "model": {"path": str(tiny_model), "dtype": "float32"},
        "data": {"max_train_dialogues": 3, "max_seed_dialogues": 3, "max_eval_dialogues": 2, "alpaca_samples": 4},
        "generation": {
            "engine": "hf", "batch_size": 1, "max_contexts": 10, "max_model_len": 2048,
            "max_context_tokens": 1000, "max_attempts": 1,
            "decoding": {"max_new_tokens": 8}, "reflection_decoding": {"max_new_tokens": 24},
        },
        "sft": {"max_steps": 2, "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 1200,
                "eval_fraction": 0.0, "save_steps": 1, "logging_steps": 1, "learning_rate": 1e-3},
        "dpo": {"max_steps": 4, "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 1200,
                "eval_fraction": 0.0, "save_steps": 1, "logging_steps": 1, "learning_rate": 1e-3},
        "evolve": {"iterations": 1},
        "eval": {"max_examples": 3},
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / "runs" / "tiny-evolve"


def _start(config: Path) -> subprocess.Popen:
    env = {**os.environ, "ESEVO_DATA_DIR": os.environ.get("ESEVO_DATA_DIR", ""), "RAY_ADDRESS": ""}
    env = {k: v for k, v in env.items() if v != ""}
    cmd = [sys.executable, "-m", "esevo_ray.cli", "evolve", "--config", str(config)]
    return subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_when(proc: subprocess.Popen, condition, what: str) -> None:
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the loop ended before {what}:\n{proc.stdout.read()[-3000:]}")
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}")


def _stage(run: Path, name: str) -> str | None:
    try:
        return json.loads((run / "manifest.json").read_text())["stages"].get(name, {}).get("status")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@pytest.mark.slow
def test_loop_resumes_after_kills_during_generation_and_training(config, data_root):
    path, run = config
    pairs = run / "m1" / "pairs"

    first = _start(path)
    _kill_when(first, lambda: len(list(pairs.glob(PART_GLOB))) >= 2, "generation wrote a batch")
    assert _stage(run, "sft_m0") == "done" and _stage(run, "pairs_m1") == "running"
    m0 = run / "m0" / "adapter" / "adapter_model.safetensors"
    m0_stamp = m0.stat().st_mtime_ns
    parts_before = {p.name: p.stat().st_mtime_ns for p in pairs.glob(PART_GLOB)}

    second = _start(path)
    _kill_when(
        second,
        lambda: _stage(run, "dpo_m1") == "running" and (run / "m1" / "ray_train").exists(),
        "DPO started",
    )
    assert _stage(run, "pairs_m1") == "done"
    for name, stamp in parts_before.items():
        assert (pairs / name).stat().st_mtime_ns == stamp, "finished batches were regenerated"

    # What a write killed before publishing leaves: removed by the next driver.
    leftover = run / "m1" / ".adapter.k1lled_0.tmp"
    leftover.mkdir(parents=True)
    os.utime(leftover, (time.time() - 3600,) * 2)
    third = _start(path)
    out, _ = third.communicate(timeout=TIMEOUT)
    assert third.returncode == 0, out[-4000:]
    assert not leftover.exists() and re.search(r"removed \d+ temporary file\(s\)", out)
    assert "M1" in out and "report:" in out

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resumed"] == 2
    # The raw data is an input: a changed copy of ESConv prepares the data again.
    raw = manifest["stages"]["data"]["input_fingerprints"]
    assert raw["esconv_train"] and raw["esconv_test"] and raw["alpaca"]
    assert all(s["status"] == "done" for s in manifest["stages"].values()), manifest["stages"]
    assert m0.stat().st_mtime_ns == m0_stamp, "the finished SFT stage was rerun"
    df = pl.read_parquet(pairs / PART_GLOB)
    assert df.height == 10 and df.select("dialogue_id", "turn_index").unique().height == 10
    assert (run / "m1" / "adapter" / "adapter_model.safetensors").exists()
    assert (run / "report" / "report.md").exists()
    # The DPO stage that finished in the third run has its time split into phases, adding up
    # to its wall time, and the summary prints the table.
    dpo = manifest["stages"]["dpo_m1"]
    assert set(dpo["profile"]) == {"startup", "compute", "io", "other"}
    assert dpo["profile"]["startup"] > 0 and dpo["profile"]["compute"] > 0
    assert sum(dpo["profile"].values()) == pytest.approx(dpo["seconds"], abs=0.5)
    assert "| dpo_m1 |" in out and "| **total** |" in out

    changed = subprocess.run(
        [sys.executable, "-m", "esevo_ray.cli", "evolve", "--config", str(path), "dpo.beta=0.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert changed.returncode == 2 and "--new-run" in changed.stderr

    # M1 trained again in place (as `esevo dpo --iteration 1` does; here M0's weights stand
    # in, under the summary of M1's training): the next run evaluates M1 again and writes a
    # new report, and reuses the rest.
    weights = "adapter_model.safetensors"
    shutil.copyfile(run / "m0" / "adapter" / weights, run / "m1" / "adapter" / weights)
    before = {k: v["end"] for k, v in manifest["stages"].items()}
    rerun = subprocess.run(
        [sys.executable, "-m", "esevo_ray.cli", "evolve", "--config", str(path)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = json.loads((run / "manifest.json").read_text())
    redone = {k for k, v in after["stages"].items() if v["end"] != before[k]}
    assert redone == {"eval_m1", "report"}
    assert [r["stage"] for r in after["retired"]] == ["eval_m1", "report"]
    assert len(list((run / "m1").glob("eval.stale-*/responses.parquet"))) == 1
