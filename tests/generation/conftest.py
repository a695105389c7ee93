"""Shared generation fixtures: a tiny-model generation config and ExTES seed contexts."""

from __future__ import annotations

import pyarrow as pa
import pytest

from esevo_ray import schema
from esevo_ray.config import RunConfig, load_config
from esevo_ray.data import load_extes
from esevo_ray.data.dialogue import context_rows, normalised

from ..conftest import ASSETS


def gen_cfg(**overrides) -> RunConfig:
    """A config for the tiny model: hf engine, short decodes, float32; `overrides` win."""
    settings = {
        "generation.engine": "hf", "generation.max_context_tokens": 1000,
        "generation.decoding.max_new_tokens": 8,
        "generation.reflection_decoding.max_new_tokens": 12, "model.dtype": "float32",
        **overrides,
    }  # fmt: skip
    return load_config(None, [f"{k}={v}" for k, v in settings.items()])


@pytest.fixture(scope="session")
def extes_contexts(tmp_path_factory) -> tuple:
    """Seed contexts of the ExTES fixture, every supporter turn: (Parquet path, rows)."""
    rows = []
    for d in load_extes(ASSETS / "extes_sample.json").items:
        rows += context_rows(normalised(d), drop_greetings=False)
    path = tmp_path_factory.mktemp("ctx") / "seed_contexts.parquet"
    table = pa.Table.from_pylist(rows, schema=schema.CONTEXTS)
    pa.parquet.write_table(schema.conform(table, schema.CONTEXTS), path)
    return path, len(rows)
