"""Ray outside the suite's own instance: separate processes (free ports, clean stop), and test
scripts run in a fresh process with a Ray of their own (`result_line`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_matching(*needles: str) -> None:
    """Kill the processes whose command line holds a needle (`ray stop` would stop the suite's
    Ray too)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(n in cmdline for n in needles):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def node_ports() -> list[str]:
    """`ray start` options giving one more node on this machine ports of its own."""
    names = (
        "node-manager-port", "object-manager-port", "metrics-export-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
    )  # fmt: skip
    return [f"--{name}={free_port()}" for name in names]


def result_line(script: Path, *args, cwd: Path, timeout: float = 280) -> str:
    """Run a test script in a fresh process (its own Ray instance, nothing left in the
    session's) and return the line it prints that starts with "RESULT "."""
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
        timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return lines[0]
