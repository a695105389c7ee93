"""The models of a run directory: the base model, M0, M1, ... and the alias "current".

A stage is finished when its adapter folder holds `adapter_model.safetensors`:
`<run>/m0/adapter` is M0 and `<run>/iter_<k>/adapter` is M^k. The registry is a pure
function of the directory, so a rescan picks up an iteration the loop has just finished.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from esevo_ray.config import ConfigError, ServeSection

BASE = "base"
CURRENT = "current"
ADAPTER_FILE = "adapter_model.safetensors"
_ITER = re.compile(r"^iter_(\d+)$")


@dataclass(frozen=True)
class ServedModel:
    """One servable model: a name, its LoRA adapter folder (None for the base) and a stamp."""

    name: str
    adapter: str | None
    # mtime (ns) of the adapter weights: a rewritten adapter gets a new engine.
    stamp: int = 0

    @property
    def key(self) -> str:
        return f"{self.name}@{self.stamp}"


def _finished(adapter_dir: Path) -> ServedModel | None:
    weights = adapter_dir / ADAPTER_FILE
    try:
        stamp = weights.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return ServedModel("", str(adapter_dir), stamp)


def scan_models(run_dir: str | Path | None) -> dict[str, ServedModel]:
    """Every servable model of `run_dir`, in iteration order: base, m0, m1, ..."""
    models = {BASE: ServedModel(BASE, None, 0)}
    if run_dir is None:
        return models
    run = Path(run_dir)
    found: dict[int, Path] = {}
    if (run / "m0" / "adapter").is_dir():
        found[0] = run / "m0" / "adapter"
    if run.is_dir():
        for child in run.iterdir():
            m = _ITER.match(child.name)
            if m and int(m.group(1)) >= 1:
                found[int(m.group(1))] = child / "adapter"
    for k in sorted(found):
        entry = _finished(found[k])
        if entry is not None:
            models[f"m{k}"] = ServedModel(f"m{k}", entry.adapter, entry.stamp)
    return models


def current_name(models: dict[str, ServedModel]) -> str | None:
    """The newest finished iteration, or None when no iteration has finished."""
    iterations = [n for n in models if n != BASE]
    return max(iterations, key=lambda n: int(n[1:])) if iterations else None


def resolve(models: dict[str, ServedModel], name: str) -> ServedModel | None:
    """The model a request names, following the alias "current"."""
    if name == CURRENT:
        target = current_name(models)
        return models[target] if target else None
    return models.get(name)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host_key(serve_cfg: ServeSection) -> None:
    """Refuse a non-loopback host without an API key.

    Raises:
        ConfigError: `serve.host` is not loopback and `$<serve.api_key_env>` is unset.
    """
    if not is_loopback(serve_cfg.host) and not os.environ.get(serve_cfg.api_key_env):
        raise ConfigError(
            f"serve.host={serve_cfg.host!r} is not a loopback address: set an API key in "
            f"${serve_cfg.api_key_env} (serve.api_key_env) or bind to 127.0.0.1"
        )
