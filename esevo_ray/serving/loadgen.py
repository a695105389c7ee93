"""Closed-loop HTTP clients for the serving benchmark and soak, and their summary.

Each client thread sends one request after another until the time is up: streamed with
`stream_options.include_usage` (for time to first token and the token count) or plain, and
optionally hanging up after the first tokens. Request i uses prompt(i) and seed i, the same
prompts and seeds the offline engine is measured on.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from esevo_ray.serving.registry import is_loopback

TOPICS = ("exam", "job interview", "breakup", "move abroad", "argument with my sister")


def prompt(i: int) -> str:
    return f"I feel stressed about my {TOPICS[i % len(TOPICS)]} ({i}). What can I do?"


@dataclass(frozen=True)
class Load:
    """Closed-loop clients against one served model, for `duration_s` seconds.

    Request i is streamed when i % stream_every == 0; a streamed request with
    i % disconnect_every == 0 (when > 0) hangs up after its first content token. Client w
    starts w * ramp_s / clients seconds in, as independent users would: clients that all
    start at once stay in lockstep, each round waiting for one prefill of every prompt.
    """

    base_url: str
    model: str = "base"
    clients: int = 8
    duration_s: float = 10.0
    max_tokens: int = 32
    api_key: str | None = field(default=None, repr=False)
    stream_every: int = 1
    disconnect_every: int = 0
    ramp_s: float = 0.0

    def __post_init__(self) -> None:
        if not is_loopback(urlsplit(self.base_url).hostname or ""):
            raise ValueError(
                f"the load generator only targets loopback addresses, got {self.base_url}"
            )


@dataclass
class Result:
    latency_s: float
    ttft_s: float
    output_tokens: int
    streamed: bool
    disconnected: bool = False


def _body(model: str, i: int, max_tokens: int, stream: bool) -> dict:
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "seed": i,
        "messages": [{"role": "user", "content": prompt(i)}],
    }
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _streamed(client, body: dict, hang_up: bool) -> Result:
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        lines = r.iter_lines()
        for line in lines:
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']['message']}")
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if ttft is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
                if hang_up:
                    return Result(ttft, ttft, 0, True, disconnected=True)
    latency = time.perf_counter() - t0
    return Result(latency, ttft if ttft is not None else latency, tokens, True)


def _plain(client, body: dict) -> Result:
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    latency = time.perf_counter() - t0
    return Result(latency, latency, r.json()["usage"]["completion_tokens"], False)


def run_clients(load: Load) -> tuple[list[Result], list[str], float]:
    """Run the clients; returns results, error messages and the wall time (s)."""
    import httpx

    headers = {"Authorization": f"Bearer {load.api_key}"} if load.api_key else {}
    results: list[Result] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + load.duration_s
    every = load.stream_every

    def worker(w: int) -> None:
        time.sleep(w * load.ramp_s / load.clients)
        with httpx.Client(base_url=load.base_url, headers=headers, timeout=300) as client:
            i = w
            while time.perf_counter() < stop:
                stream = i % every == 0
                hang_up = (
                    stream
                    and load.disconnect_every > 0
                    and (i // every) % load.disconnect_every == 0
                )
                try:
                    body = _body(load.model, i, load.max_tokens, stream)
                    res = _streamed(client, body, hang_up) if stream else _plain(client, body)
                    with lock:
                        results.append(res)
                except Exception as e:  # counted and reported, the run goes on
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                i += load.clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(load.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors, time.perf_counter() - t0


def summarise(results: list[Result], errors: list[str], wall: float) -> dict:
    """Requests/s, output tokens/s, p50/p99 latency and time to first token."""
    lat = np.array([r.latency_s for r in results]) if results else np.array([np.nan])
    ttft = np.array([r.ttft_s for r in results]) if results else np.array([np.nan])
    tokens = sum(r.output_tokens for r in results)
    return {
        "duration_s": round(wall, 3),
        "requests": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "requests_per_s": round(len(results) / wall, 3),
        "output_tokens": tokens,
        "output_tok_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 4),
        "latency_p99_s": round(float(np.percentile(lat, 99)), 4),
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 4),
        "ttft_p99_s": round(float(np.percentile(ttft, 99)), 4),
    }
