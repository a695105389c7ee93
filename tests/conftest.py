"""Shared fixtures: one tiny model and one local Ray instance per test session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from esevo_ray.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def data_root() -> Path:
    from esevo_ray.data.prepare import data_dir

    try:
        return data_dir()
    except FileNotFoundError:
        pytest.skip("no ../shared/data and no ESEVO_DATA_DIR")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def http(served):
    """An HTTP client for the `served` application of the test package that asks for it."""
    import httpx

    with httpx.Client(base_url=served.url, headers=served.headers, timeout=60) as client:
        yield client
