"""The models of a run directory: the base model, m0, m1, ... and the alias "current".

Which models are finished, and where their adapters are, is `RunLayout.models()`; served
names are the layout's model names. The registry is a pure function of the directory, so a
rescan picks up an iteration the loop has just finished.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from esevo_ray.config import ConfigError, ServeSection
from esevo_ray.layout import ADAPTER_FILE, RunLayout, model_index, model_name

BASE = "base"
CURRENT = "current"


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


def scan_models(run_dir: str | Path | None) -> dict[str, ServedModel]:
    """Every servable model of `run_dir`, in iteration order: base, m0, m1, ..."""
    models = {BASE: ServedModel(BASE, None, 0)}
    if run_dir is None:
        return models
    for t, adapter in RunLayout(Path(run_dir)).models().items():
        if adapter is None:  # M^t is the base model itself (evolve.init: base)
            models[model_name(t)] = ServedModel(model_name(t), None, 0)
            continue
        try:
            stamp = (adapter / ADAPTER_FILE).stat().st_mtime_ns
        except FileNotFoundError:  # removed between the listing and now
            continue
        models[model_name(t)] = ServedModel(model_name(t), str(adapter), stamp)
    return models


def current_name(models: dict[str, ServedModel]) -> str | None:
    """The newest finished iteration, or None when no iteration has finished."""
    iterations = [n for n in models if model_index(n) is not None]
    return max(iterations, key=model_index) if iterations else None


def resolve(models: dict[str, ServedModel], name: str) -> ServedModel | None:
    """The model a request names, following the alias "current"."""
    if name == CURRENT:
        target = current_name(models)
        return models[target] if target else None
    return models.get(name)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost", and for 127.x.y.z as a socket bound to "::"
    sees an IPv4 client (::ffff:127.0.0.1)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def http_url(host: str, port: int) -> str:
    """The base URL of a server on host:port; an IPv6 address goes in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
