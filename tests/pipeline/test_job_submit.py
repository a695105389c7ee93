"""`ray job submit` against a real local head bound to 127.0.0.1, with token auth."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_head(temp_dir: str) -> None:
    """Stop only this head's processes (`ray stop` would stop the suite's Ray too)."""
    for proc in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(proc.info["cmdline"] or []):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def ray_head(ray_local, data_root):
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    dash = _free_port()
    env = {
        **os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}",
        "ESEVO_DATA_DIR": str(data_root), "RAY_ADDRESS": "",
    }  # fmt: skip
    cmd = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
        f"--port={_free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
        "--num-cpus=1", "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=120)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_head(temp_dir)
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
