"""Wiring of the Serve application: generator and ingress deployments from a run config.

`build_app` is the Serve import path (`esevo_ray.serving.deploy:build_app`, used by
cluster/serve.yaml); `esevo serve` and the serving benchmark call `start_app`.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from esevo_ray.config import RunConfig, ServeSection, load_config
from esevo_ray.errors import UsageError
from esevo_ray.generation.engine_choice import check_vllm_options, choose_engine
from esevo_ray.generation.placement import Placement, place, resolve_device
from esevo_ray.layout import RunLayout
from esevo_ray.models import adapter_rank, lora_rank_bound
from esevo_ray.resources import node_gpus
from esevo_ray.serving.app import Ingress
from esevo_ray.serving.checks import key_digest
from esevo_ray.serving.engine import EngineSettings
from esevo_ray.serving.generator import Generator
from esevo_ray.serving.registry import check_host_key, http_url
from esevo_ray.storage import check_shared

APP_NAME = "esevo"


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.serve.run_dir) if cfg.serve.run_dir else RunLayout.of(cfg).root


def served_run(cfg: RunConfig, run_dir: str | Path | None = None) -> Path:
    """The run folder to serve: `run_dir`, else the config's, resolved.

    Raises:
        UsageError: no folder is there (else the base model alone would be served, and the
            human-evaluation database written into a folder made for it).
    """
    run = Path(run_dir if run_dir is not None else default_run_dir(cfg)).resolve()
    if not run.is_dir():
        where = (
            "the run_dir given" if run_dir is not None
            else "serve.run_dir" if cfg.serve.run_dir else "<output_dir>/<name> of the config"
        )  # fmt: skip
        raise UsageError(
            f"serve: no run directory at {run} ({where}): train the run first (`esevo evolve` "
            "with this config), or serve one that is there"
        )
    return run


def human_db(cfg: RunConfig, run_dir: str | Path | None = None) -> Path:
    """serve.human_eval.db_path, else the run's human-evaluation database."""
    run = RunLayout(Path(run_dir) if run_dir is not None else default_run_dir(cfg))
    return run.human_db_at(cfg.serve.human_eval.db_path)


def served_paths(cfg: RunConfig, run_dir: str | Path | None = None) -> list[Path]:
    """What every replica reads: the base model and the run's finished adapters."""
    from esevo_ray.models import resolve_model

    run = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    adapters = RunLayout(run).finished().values() if run.is_dir() else []
    return [resolve_model(cfg.model.path), *adapters]


def serve_engine(s: ServeSection, gpus_by_node: list[float]) -> str:
    """serve.engine for replicas on the device `serve.device` resolves to on these nodes.

    Raises:
        EngineUnavailable: it cannot run there (engine_choice.choose_engine).
    """
    device = resolve_device(s.device, gpus_by_node)
    kind = choose_engine(s.engine, "serve.engine", device=device)
    if kind == "vllm":  # the replicas build vLLM's async engine
        check_vllm_options(s.vllm, "serve.vllm", "AsyncEngineArgs")
    return kind


def replica_placement(
    s: ServeSection, gpus_by_node: list[float], engine: str | None = None
) -> Placement:
    """Where each generator replica runs (the generation rule, esevo_ray.generation.placement):
    `serve.device` resolved on the cluster, and `serve.gpus_per_replica` (unset: 1 on cuda, 0
    on cpu) for each of `serve.num_replicas`, checked to fit before Serve waits on them.
    `engine`: the replicas' (`serve_engine`; None: chosen here).

    Raises:
        PlacementError: the replicas' GPUs do not fit the cluster, or cannot hold their
            engines (placement.check_gpus); the message names the keys.
        EngineUnavailable: serve.engine cannot run there.
    """
    return place(
        s, engine or serve_engine(s, gpus_by_node), s.num_replicas, "serve",
        gpus_key="gpus_per_replica", count_key="num_replicas", gpus_by_node=gpus_by_node,
    )  # fmt: skip


def engine_settings(
    cfg: RunConfig,
    run_dir: Path,
    base: str,
    device: str | None = None,
    kind: str | None = None,
) -> dict:
    """The generator's EngineSettings (as a dict) from the `serve` section and the run, for
    replicas on `device` (None: not checked against the installed vllm), with the engine
    `kind` when it is chosen already (`serve_engine`).

    max_lora_rank: serve.max_lora_rank, else the largest of sft.lora.r, dpo.lora.r and the
    run's adapters, rounded up to a value vLLM accepts.
    """
    s = cfg.serve
    if s.max_lora_rank is not None:
        ranks = [s.max_lora_rank]
    else:
        adapters = RunLayout(run_dir).finished().values() if run_dir.is_dir() else []
        ranks = [cfg.sft.lora.r, cfg.dpo.lora.r, *(adapter_rank(a) for a in adapters)]
    settings = EngineSettings(
        base_model=base,
        kind=kind or choose_engine(s.engine, "serve.engine", device=device),
        dtype=s.dtype or cfg.model.dtype,
        max_model_len=s.max_model_len,
        max_adapters=s.max_adapters,
        max_lora_rank=lora_rank_bound(ranks),
        max_num_seqs=s.max_num_seqs,
        kv_cache_gib=s.kv_cache_gib,
        extra=dict(s.vllm),
    )
    return asdict(settings)


def build_application(cfg: RunConfig, run_dir: str | Path | None = None):
    """The Serve application for `cfg`, serving the models of `run_dir` (default from cfg).

    Connected to Ray (`esevo serve`, or Serve building it on a cluster for `serve run` /
    `serve deploy`), the replicas are placed on the cluster and every node is checked to see
    the run and the database folder (`check_shared`); not connected (Ray's `serve run` of an
    import path builds first, then joins the cluster it was told), this machine's GPUs decide
    and Ray is left to the caller.
    """
    import ray

    from esevo_ray.models import resolve_model

    check_host_key(cfg.serve)
    s = cfg.serve
    run = served_run(cfg, run_dir)
    base = str(resolve_model(cfg.model.path).resolve())
    db = human_db(cfg, run)
    if ray.is_initialized():
        check_shared("serve", writes=[db.parent], reads=served_paths(cfg, run))
        gpus_by_node = node_gpus()
    else:
        import torch

        gpus_by_node = [float(torch.cuda.device_count())]
    kind = serve_engine(s, gpus_by_node)  # once: its `auto` choice logs why
    placement = replica_placement(s, gpus_by_node, kind)
    generator = Generator.options(
        num_replicas=s.num_replicas,
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests or -1,  # -1: Serve's "no bound"
        ray_actor_options={"num_cpus": s.cpus_per_replica, **placement.ray_options()},
    ).bind(engine_settings(cfg, run, base, kind=kind), placement.as_dict())
    # The replica is given the key's digest: it may start in a process that does not inherit
    # this shell's environment, and Ray shows an actor's runtime_env on its dashboard.
    key = os.environ.get(s.api_key_env)
    return Ingress.options(
        max_ongoing_requests=4 * s.max_ongoing_requests, ray_actor_options={"num_cpus": 0}
    ).bind(
        generator, cfg.model_dump(mode="json"), str(run), base, str(db.resolve()),
        key_digest(key) if key else None,
    )  # fmt: skip


def build_app(args: dict):
    """Serve import path: `args` = {"config": YAML path, "run_dir": ..., "overrides": [...]}."""
    cfg = load_config(args.get("config"), list(args.get("overrides") or []))
    return build_application(cfg, args.get("run_dir"))


def check_no_serve(s: ServeSection) -> None:
    """Raise UsageError when Serve runs on the connected Ray cluster already: it would keep
    its own host and port, and stopping this application's Serve would stop every one."""
    from ray import serve

    running = serve.status()
    if running.proxies or running.applications:
        apps = ", ".join(sorted(running.applications)) or "none"
        raise UsageError(
            f"Ray Serve runs on this Ray cluster already (applications: {apps}): it would "
            f"not listen on {s.host}:{s.port}, and stopping this one would stop them all. "
            "Deploy beside them with `serve deploy cluster/serve.yaml`, or stop it first "
            "(`serve shutdown`)"
        )


def start_app(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    name: str = APP_NAME,
    route_prefix: str = "/",
) -> str:
    """Start Serve on cfg.serve.host:port with the application at `route_prefix`; returns
    the application's base URL.

    A start that fails or is interrupted shuts Serve down again; so must the caller, when it
    is done with the application (`serve.shutdown()`: on a cluster that `ray.init()` joined,
    Serve's controller and proxies outlive this process, and the next start is refused).

    Raises:
        UsageError: Serve runs on the Ray cluster already (`ray.init()` joins a running
            one): it would keep its own host and port, and stopping this application's
            Serve (Ctrl-C) would stop every application there.
    """
    import ray
    from ray import serve

    check_host_key(cfg.serve)  # before anything starts
    served_run(cfg, run_dir)
    if not ray.is_initialized():
        ray.init()
    check_no_serve(cfg.serve)
    app = build_application(cfg, run_dir)
    try:
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        serve.run(app, name=name, route_prefix=route_prefix)
    except BaseException:  # Ctrl-C while replicas start, a replica that fails to deploy
        serve.shutdown()  # no Serve left on a cluster that `ray.init()` joined
        raise
    return http_url(cfg.serve.host, cfg.serve.port) + route_prefix.rstrip("/")
