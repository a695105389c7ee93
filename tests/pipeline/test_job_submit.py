"""`ray job submit` against a real local head bound to 127.0.0.1, with token auth."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ..ray_processes import free_port, kill_matching

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head(ray_local, data_root, tmp_path):
    """A head started as the README does, from a home without a Ray token (a new machine)."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    dash = free_port()
    env = {
        **os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}",
        "ESEVO_DATA_DIR": str(data_root), "RAY_ADDRESS": "", "HOME": str(tmp_path / "home"),
    }  # fmt: skip
    (tmp_path / "home").mkdir()
    generate = [str(BIN / "ray"), "get-auth-token", "--generate"]
    subprocess.run(generate, env=env, check=True, capture_output=True, timeout=60)
    cmd = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
        f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
        "--num-cpus=1", "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=120)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        kill_matching(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_job(ray_head, tmp_path):
    address, env = ray_head
    work = tmp_path / "work"
    shutil.copytree(REPO / "jobs", work / "jobs")
    shutil.copytree(REPO / "configs", work / "configs")
    out = tmp_path / "runs"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(work), "--",
        "python", "jobs/prepare_data.py", "--config", "configs/cpu-demo.yaml",
        f"output_dir={out}", "data.max_train_dialogues=3", "data.max_eval_dialogues=2",
        "data.max_seed_dialogues=2", "data.alpaca_samples=2",
    ]  # fmt: skip
    proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower()
    manifest = json.loads((out / "cpu-demo" / "data" / "manifest.json").read_text())
    assert len(manifest["dialogue_ids"]["sft"]) == 3

    # Without the token the job server refuses the client.
    no_token = {**env, "RAY_AUTH_MODE": "disabled"}
    listing = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", address],
        env=no_token,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode != 0
    # Refused for the missing token, not for any other failure (a dashboard gone, say).
    assert "authentication" in (listing.stdout + listing.stderr).lower(), listing.stderr[-2000:]
