"""Fixtures of the evaluation tests: a local chat server, evaluation contexts, small configs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from esevo_ray.io import write_parquet
from esevo_ray.schema import CONTEXTS, conform
from tests.evaluation.chat_server import ChatServer
from tests.evaluation.helpers import CONTEXTS as TURNS
from tests.evaluation.helpers import GOLDEN


@pytest.fixture(scope="session")
def _chat_server():
    server = ChatServer()
    yield server
    server.close()


@pytest.fixture
def chat_server(_chat_server) -> ChatServer:
    _chat_server.reset()
    return _chat_server


def write_contexts(path: Path, n: int = 3) -> Path:
    """`n` evaluation contexts (CONTEXTS schema) from the helper dialogues."""
    rows = [
        {
            "dialogue_id": f"d{i}", "source": "esconv", "split": "test", "turn_index": 2 * i + 1,
            "context": TURNS[i % len(TURNS)], "golden": GOLDEN[i % len(GOLDEN)],
            "strategy": "Question", "situation": "", "emotion_type": "sadness",
            "problem_type": "job crisis",
        }
        for i in range(n)
    ]  # fmt: skip
    return write_parquet(conform(pa.Table.from_pylist(rows, schema=CONTEXTS), CONTEXTS), path)


def write_config(path: Path, output_dir: Path, tiny_model: Path | None = None, **sections) -> Path:
    """A run config for the tiny model on the hf engine, merged with `sections`."""
    cfg = {
        "name": "tiny-eval",
        "output_dir": str(output_dir),
        "model": {"path": str(tiny_model) if tiny_model else None, "dtype": "float32"},
        "generation": {
            "engine": "hf", "batch_size": 2, "max_model_len": 2048, "max_context_tokens": 1000,
            "decoding": {"max_new_tokens": 8}, "reflection_decoding": {"max_new_tokens": 12},
        },
    }  # fmt: skip
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path.write_text(yaml.safe_dump(cfg))
    return path
