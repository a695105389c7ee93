"""Training fixtures: tiny SFT / pairs Parquet files and run configs on the tiny model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from esevo_ray.config import RunConfig, load_config
from esevo_ray.io import write_parquet
from tests.training.tables import TINY_TRAIN, pairs_table, sft_table


@pytest.fixture
def sft_dir(tmp_path) -> Path:
    write_parquet(sft_table(), tmp_path / "data" / "sft.parquet")
    return tmp_path / "data"


@pytest.fixture
def pairs_path(tmp_path) -> Path:
    return write_parquet(pairs_table(), tmp_path / "pairs.parquet")


@pytest.fixture
def make_cfg(tiny_model, tmp_path) -> Callable[..., RunConfig]:
    """A run config on the tiny model: few short steps, no eval; extra `key=value` overrides."""

    def make(*overrides: str) -> RunConfig:
        base = [
            f"model.path={tiny_model}",
            "model.dtype=float32",
            f"output_dir={tmp_path / 'runs'}",
        ]
        base += [f"{stage}.{o}" for stage in ("sft", "dpo") for o in TINY_TRAIN]
        return load_config(None, [*base, *overrides])

    return make
