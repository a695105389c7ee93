"""Run folders every node must share: checked on a real two-node cluster on this machine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esevo_ray import schema
from esevo_ray.data import load_extes
from esevo_ray.data.dialogue import context_rows, normalised
from esevo_ray.storage import MARKER_PREFIX, signature

from .conftest import ASSETS
from .ray_processes import free_port, kill_matching, node_ports

BIN = Path(sys.executable).parent
DRIVER = Path(__file__).with_name("storage_driver.py")


def test_signature_lists_files_and_sizes_but_not_markers(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"123")
    (tmp_path / f"{MARKER_PREFIX}x").touch()
    assert signature(tmp_path) == [("sub/a.bin", 3)]
    assert signature(tmp_path / "sub" / "a.bin") == [("", 3)]
    assert signature(tmp_path / "absent") is None


def _private_mount_works(folder: Path) -> bool:
    """Whether this machine lets a process mount a folder of its own (root, unshare)."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none {shlex.quote(str(folder))}"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_a_folder_one_node_does_not_share_stops_the_stage(ray_local, tiny_model, tmp_path):
    shared, hidden = tmp_path / "shared", tmp_path / "hidden"
    shared.mkdir()
    hidden.mkdir()
    (hidden / "data.bin").write_bytes(b"x" * 10)
    rows = []
    for d in load_extes(ASSETS / "extes_sample.json").items:
        rows += context_rows(normalised(d), drop_greetings=False)
    contexts = shared / "contexts.parquet"
    pq.write_table(schema.conform(pa.Table.from_pylist(rows), schema.CONTEXTS), contexts)
    if not _private_mount_works(hidden):
        pytest.skip("needs unshare and mount (root) to give one node a folder of its own")

    temp_dir, port = tempfile.mkdtemp(prefix="rs", dir="/tmp"), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": ""}
    ray = str(BIN / "ray")
    head = [
        ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
        "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}", *node_ports(),
    ]  # fmt: skip
    worker = [
        ray, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
        "--num-cpus=1", "--disable-usage-stats", *node_ports(),
    ]  # fmt: skip
    # The worker node, and every process it starts, sees an empty folder at `hidden`.
    private = f"mount -t tmpfs none {shlex.quote(str(hidden))} && exec {shlex.join(worker)}"
    try:
        for cmd in (head, ["unshare", "-m", "sh", "-c", private]):
            subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=120)
        proc = subprocess.run(
            [sys.executable, str(DRIVER), f"127.0.0.1:{port}", str(tiny_model), str(contexts),
             str(shared), str(hidden)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        kill_matching(temp_dir, f"127.0.0.1:{port}")
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2 and len(result["worker"]) == 1
    # Folders and files on the shared disk pass on both nodes.
    assert result["shared"] == 2
    # A folder the stage writes and a file it reads, both only on the head's disk: each is
    # named with the one node that does not see it.
    problems = result["hidden"].splitlines()[1:3]
    assert str(hidden / "out") in problems[0] and str(hidden / "data.bin") in problems[1]
    for line in problems:
        assert result["worker"][0] in line and result["head"][0] not in line
    assert str(tiny_model) not in result["hidden"]
    # The generation stage stops before any actor starts: no part written, nothing lost.
    assert result["pairs"].startswith("pairs iteration 1: every node")
    assert str(hidden / "pairs") in result["pairs"]
    assert not [f for f in result["files"] if f.startswith(MARKER_PREFIX) or f.endswith(".parquet")
                and f != "contexts.parquet"]  # fmt: skip
