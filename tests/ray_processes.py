"""A Ray cluster of separate processes beside the suite's own instance: free ports, clean stop."""

from __future__ import annotations

import socket

import psutil


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
