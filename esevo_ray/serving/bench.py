"""`esevo bench serve`: N concurrent clients for a fixed time against the served app.

Measures requests/s, p50/p99 latency and time to first content token (streaming), once
with the configured batching and once with `max_batch_size=1`, on loopback only.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from esevo_ray.config import RunConfig


def _one(client, model: str, max_tokens: int, i: int) -> tuple[float, float]:
    """One streaming request; returns (latency_s, time_to_first_content_s)."""
    body = {
        "model": model,
        "stream": True,
        "max_tokens": max_tokens,
        "seed": i,
        "messages": [{"role": "user", "content": f"I feel stressed about exam {i}."}],
    }
    t0 = time.perf_counter()
    ttft = None
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if ttft is None and line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    ttft = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    return latency, ttft if ttft is not None else latency


def bench_serve(
    base_url: str,
    model: str = "base",
    clients: int = 8,
    duration_s: float = 10.0,
    max_tokens: int = 32,
    api_key: str | None = None,
) -> dict:
    """Run `clients` closed-loop clients for `duration_s` seconds; summarise the requests."""
    import httpx

    if not base_url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"bench_serve only targets loopback addresses, got {base_url}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    results: list[tuple[float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + duration_s

    def worker(w: int) -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
            i = w
            while time.perf_counter() < stop:
                try:
                    res = _one(client, model, max_tokens, i)
                    with lock:
                        results.append(res)
                except Exception as e:  # counted and reported, the run goes on
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([r[0] for r in results]) if results else np.array([np.nan])
    ttft = np.array([r[1] for r in results]) if results else np.array([np.nan])
    return {
        "clients": clients,
        "duration_s": round(wall, 3),
        "requests": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "requests_per_s": round(len(results) / wall, 3),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 4),
        "latency_p99_s": round(float(np.percentile(lat, 99)), 4),
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 4),
        "ttft_p99_s": round(float(np.percentile(ttft, 99)), 4),
    }


def _with_batch(cfg: RunConfig, max_batch_size: int) -> RunConfig:
    data = cfg.model_dump()
    data["serve"]["max_batch_size"] = max_batch_size
    return RunConfig.model_validate(data)


def bench_serve_app(
    cfg: RunConfig,
    run_dir: str | Path | None,
    model: str = "base",
    clients: int = 8,
    duration_s: float = 10.0,
    max_tokens: int = 32,
) -> dict:
    """Deploy the app, benchmark with batching, redeploy with max_batch_size=1, again."""
    import os

    from ray import serve

    from esevo_ray.serving.deploy import build_application, start_app

    url = start_app(cfg, run_dir)
    key = os.environ.get(cfg.serve.api_key_env)
    out: dict = {"model": model, "max_tokens": max_tokens, "engine": cfg.serve.engine}
    try:
        for label, size in (("batched", cfg.serve.max_batch_size), ("unbatched", 1)):
            # Only the generator's user_config changes: Serve reconfigures it in place.
            serve.run(
                build_application(_with_batch(cfg, size), run_dir), name="esevo", route_prefix="/"
            )
            bench_serve(url, model, clients, 2.0, max_tokens, key)  # warm-up, loads the model
            out[label] = {
                "max_batch_size": size,
                **bench_serve(url, model, clients, duration_s, max_tokens, key),
            }
    finally:
        serve.delete("esevo")
    return out
