"""`esevo bench serve`: the served endpoint against its own engine offline, and a soak.

`bench_serve_app` measures, in one run and on the same prompts, seeds and decoding: the
offline vLLM engine's output tokens/s with batches of 1, 8 and 32 prompts (in a Ray worker
of its own, before the application starts), once with the model as the server runs it (a
LoRA request) and once with plain weights (merged); then the served application's output
tokens/s, p50/p99 latency and time to first token with 1, 8 and 32 streaming clients.
`soak` runs many clients for minutes, mixing streamed and plain requests with clients that
disconnect early, and reports errors and the generator replica's memory. Loopback only.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import replace
from pathlib import Path

from esevo_ray.config import RunConfig
from esevo_ray.errors import UsageError
from esevo_ray.serving.loadgen import Load, Result, prompt, run_clients, summarise
from esevo_ray.serving.registry import check_host_key, http_url, is_loopback

# A server bound to every interface is reached on this machine through loopback.
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def local_url(cfg: RunConfig) -> str:
    """The URL the load generator sends to: serve.host, or loopback where it is a wildcard.

    Raises:
        UsageError: serve.host is one interface other than loopback (the load generator
            only targets this machine's loopback).
    """
    host = WILDCARD_HOSTS.get(cfg.serve.host, cfg.serve.host)
    if not is_loopback(host):
        raise UsageError(
            f"serve.host={cfg.serve.host!r}: the benchmark sends its load to loopback; bind "
            "to 127.0.0.1 (or 0.0.0.0) to benchmark"
        )
    return http_url(host, cfg.serve.port)


def bench_serve(load: Load) -> dict:
    """Tokens/s, latency and time to first token of `load` (streaming clients: see `Load`)."""
    results, errors, wall = run_clients(load)
    return {"clients": load.clients, "ramp_s": load.ramp_s, **summarise(results, errors, wall)}


def _offline_run(
    settings: dict,
    placement: dict,
    adapter: str | None,
    max_tokens: int,
    sizes: list[int],
    lora: bool,
) -> dict:
    """Output tokens/s of the offline vLLM engine, batches of each size in `sizes`, placed as
    a replica is (`placement`).

    `lora`: the model as the server runs it (the adapter as a LoRA request; the base model on
    CPU as the zero adapter, on GPUs as it is); else plain weights (the adapter merged, or the
    base alone).
    """
    from esevo_ray.generation.placement import Placement, enter_actor

    enter_actor(Placement(**placement), "serve")  # first: hide GPUs it did not reserve
    from esevo_ray.config import DecodingSection
    from esevo_ray.generation.engines import EngineOptions, VllmEngine
    from esevo_ray.numerics import engine_dtype
    from esevo_ray.prompts import task_messages
    from esevo_ray.serving.engine import CPU_BLOCK_SIZE, EngineSettings, zero_adapter

    s = {**settings, "dtype": engine_dtype(settings["dtype"])}  # as the replica resolves it
    import torch

    on_gpu = torch.cuda.is_available()
    cpu_block = None if on_gpu else CPU_BLOCK_SIZE  # as the server's engine
    # The server's base model is the zero adapter on CPU; on GPUs, a LoRA engine's request
    # without an adapter.
    lora_engine = {}
    if lora and adapter is None and not on_gpu:
        engine_settings = EngineSettings(**{k: v for k, v in s.items() if k != "decoding"})
        adapter = str(zero_adapter(engine_settings))
    elif lora and adapter is None:
        lora_engine = {"enable_lora": True, "max_lora_rank": s["max_lora_rank"], "max_loras": 1}
    options = EngineOptions(
        dtype=s["dtype"],
        max_model_len=s["max_model_len"],
        lora_mode="adapter" if lora else "merge",
        lora_rank=s["max_lora_rank"],
        extra={
            "max_num_seqs": s["max_num_seqs"],
            "block_size": cpu_block,
            **lora_engine,
            **s["extra"],
        },
    )
    engine = VllmEngine(s["base_model"], adapter, options)
    decoding = DecodingSection(**{**s["decoding"], "max_new_tokens": max_tokens})
    engine.chat([task_messages([{"role": "user", "content": prompt(0)}])], decoding, [0])
    out = {}
    for size in sizes:
        n = max(2 * size, 4)  # the same prompts and seeds the served clients send first
        convs = [task_messages([{"role": "user", "content": prompt(i)}]) for i in range(n)]
        t0, tokens = time.perf_counter(), 0
        for k in range(0, n, size):
            done = engine.chat(convs[k : k + size], decoding, list(range(k, min(k + size, n))))
            tokens += sum(c.output_tokens for c in done)
        wall = time.perf_counter() - t0
        out[str(size)] = {
            "prompts": n,
            "output_tokens": tokens,
            "output_tok_per_s": round(tokens / wall, 2),
        }
    return out


def offline_tok_per_s(cfg: RunConfig, run_dir: Path, model: str, max_tokens: int, sizes) -> dict:
    """`_offline_run` as LoRA and plain, each in a Ray worker that exits afterwards."""
    import ray

    from esevo_ray.models import resolve_model
    from esevo_ray.resources import node_gpus
    from esevo_ray.serving.deploy import engine_settings, replica_placement, serve_engine
    from esevo_ray.serving.registry import resolve, scan_models

    served = resolve(scan_models(run_dir), model)
    if served is None:
        raise ValueError(f"model {model!r} is not in {run_dir}")
    # Placed as one replica (its GPUs reserved); the served app starts after this returns.
    gpus_by_node = node_gpus()
    kind = serve_engine(cfg.serve, gpus_by_node)
    one = cfg.serve.model_copy(update={"num_replicas": 1})
    placement = replica_placement(one, gpus_by_node, kind)
    base = str(resolve_model(cfg.model.path).resolve())
    settings = engine_settings(cfg, run_dir, base, kind=kind)
    settings["decoding"] = cfg.serve.decoding.model_dump()
    task = ray.remote(num_cpus=cfg.serve.cpus_per_replica, max_calls=1, **placement.ray_options())(
        _offline_run
    )
    return {
        kind: ray.get(
            task.remote(
                settings, placement.as_dict(), served.adapter, max_tokens, list(sizes), lora
            )
        )
        for kind, lora in (("lora", True), ("plain", False))
    }


def bench_serve_app(
    cfg: RunConfig,
    run_dir: str | Path | None,
    model: str = "current",
    clients: tuple[int, ...] = (1, 8, 32),
    duration_s: float = 20.0,
    max_tokens: int = 64,
    ramp_s: float = 2.0,
) -> dict:
    """Offline engine, then the served app, at each concurrency; ratios side by side.

    The load average (1 min) is recorded before and after: the numbers are only as quiet as
    the machine was.
    """
    import ray
    from ray import serve

    from esevo_ray.resources import node_gpus
    from esevo_ray.serving.deploy import (
        check_no_serve,
        default_run_dir,
        serve_engine,
        served_run,
        start_app,
    )

    run = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    key = os.environ.get(cfg.serve.api_key_env)
    # What start_app would refuse after the offline runs, refused before any work.
    load = Load(local_url(cfg), model, max_tokens=max_tokens, api_key=key)
    check_host_key(cfg.serve)
    served_run(cfg, run)
    if not ray.is_initialized():
        ray.init()
    # The offline side is vLLM's engine: the served app on another engine would be divided
    # by a number it was not measured against.
    kind = serve_engine(cfg.serve, node_gpus())
    if kind != "vllm":
        raise UsageError(
            f"esevo bench serve compares the application with its vLLM engine run offline, "
            f"but serve.engine ({cfg.serve.engine}) is {kind} here: set serve.engine=vllm "
            "where vllm is installed (a soak, `--soak SECONDS`, runs on any engine)"
        )
    check_no_serve(cfg.serve)
    load_before = round(os.getloadavg()[0], 2)
    offline = offline_tok_per_s(cfg, run, model, max_tokens, clients)
    start_app(cfg, run)
    served: dict[str, dict] = {}
    try:
        bench_serve(replace(load, clients=max(clients), duration_s=5.0))  # warm-up: adapter, caches
        for c in clients:
            served[str(c)] = bench_serve(
                replace(load, clients=c, duration_s=duration_s, ramp_s=ramp_s)
            )
    finally:
        serve.shutdown()  # started here (check_no_serve): proxies and all
    ratio = {
        kind: {
            c: round(served[c]["output_tok_per_s"] / runs[c]["output_tok_per_s"], 3) for c in served
        }
        for kind, runs in offline.items()
    }
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "model": model,
        "engine": kind,
        "max_tokens": max_tokens,
        "decoding": cfg.serve.decoding.model_dump(),
        "duration_s": duration_s,
        "offline": offline,
        "served": served,
        "served_over_offline": ratio,
    }


def replica_rss(name: str = "Generator", app: str = "esevo") -> int | None:
    """Resident memory (bytes) of one replica of deployment `name`, engine processes included."""
    from ray import serve

    return serve.get_deployment_handle(name, app).stats.remote().result().get("rss_bytes")


def soak(load: Load) -> dict:
    """`load` with the generator replica's memory sampled every 5 s; errors exclude the
    disconnects that `load.disconnect_every` provokes."""
    samples: list[tuple[float, int | None]] = []
    stop = threading.Event()

    def sample() -> None:  # replica memory every 5 s while the clients run
        t0 = time.perf_counter()
        while not stop.wait(5.0):
            samples.append((round(time.perf_counter() - t0, 1), replica_rss()))

    before = replica_rss()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results, errors, wall = run_clients(load)
    finally:
        stop.set()
        sampler.join()
    time.sleep(2.0)  # let aborted requests leave the engine before the last reading
    after = replica_rss()
    done: list[Result] = [r for r in results if not r.disconnected]
    growth = None if before is None or after is None else after - before
    return {
        "clients": load.clients,
        **summarise(done, errors, wall),
        "disconnected_early": sum(r.disconnected for r in results),
        "streamed": sum(r.streamed for r in done),
        "plain": sum(not r.streamed for r in done),
        "rss_before_mb": None if before is None else round(before / 2**20, 1),
        "rss_after_mb": None if after is None else round(after / 2**20, 1),
        "rss_growth_mb": None if growth is None else round(growth / 2**20, 1),
        "rss_samples_mb": [(t, None if v is None else round(v / 2**20, 1)) for t, v in samples],
    }


def soak_app(
    cfg: RunConfig,
    run_dir: str | Path | None,
    model: str = "current",
    clients: int = 32,
    duration_s: float = 120.0,
    max_tokens: int = 32,
) -> dict:
    """Start the application, warm it up, soak it, shut it down. Streamed and plain requests
    alternate; every fifth streamed request hangs up after its first tokens (see `soak`)."""
    from ray import serve

    from esevo_ray.serving.deploy import start_app

    key = os.environ.get(cfg.serve.api_key_env)
    load = Load(
        local_url(cfg), model, clients=8, duration_s=5.0, max_tokens=max_tokens, api_key=key
    )
    start_app(cfg, run_dir)
    try:
        bench_serve(load)  # warm-up: adapter, caches
        soaked = replace(
            load, clients=clients, duration_s=duration_s, stream_every=2, disconnect_every=5
        )
        return {"model": model, **soak(soaked)}
    finally:
        serve.shutdown()  # started here (check_no_serve): proxies and all
