"""`esevo serve`, `esevo report human` and `esevo bench serve`.

`add_parsers(sub)` adds `serve` and extends an existing `report` parser (the evaluation
report's, whose positional run_dir then also accepts the word `human`); register it after
the evaluation CLI. `add_bench_parsers(bench)` adds `serve` to the `bench` subcommands.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

APP_NAME = "esevo"


def _load(args: argparse.Namespace):
    from esevo_ray.config import load_config

    overrides = list(getattr(args, "overrides", None) or [])
    for key, value in (
        ("serve.host", getattr(args, "host", None)),
        ("serve.port", getattr(args, "port", None)),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(getattr(args, "config", None), overrides)


def start_app(cfg, run_dir: str | Path | None = None, name: str = APP_NAME) -> str:
    """Start Serve on cfg.serve.host:port with the application; returns the base URL."""
    import ray
    from ray import serve

    from esevo_ray.serving.deploy import build_application

    app = build_application(cfg, run_dir)  # checks host and key before anything starts
    if not ray.is_initialized():
        ray.init()
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(app, name=name, route_prefix="/")
    return f"http://{cfg.serve.host}:{cfg.serve.port}"


def cmd_serve(args: argparse.Namespace) -> int:
    from ray import serve

    cfg = _load(args)
    url = start_app(cfg, args.run_dir)
    print(f"serving on {url}/v1 (chat completions), {url}/human (human evaluation); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0


def human_db_path(args: argparse.Namespace) -> Path:
    """--db, else the config's serve.human_eval.db_path, else <run_dir>/human_eval/db.sqlite."""
    if args.db:
        return Path(args.db)
    from esevo_ray.serving.deploy import default_run_dir

    cfg = _load(args)
    if cfg.serve.human_eval.db_path:
        return Path(cfg.serve.human_eval.db_path)
    run = Path(args.human_run_dir) if args.human_run_dir else default_run_dir(cfg)
    return run / "human_eval" / "db.sqlite"


def cmd_report_human(args: argparse.Namespace) -> int:
    from esevo_ray.serving.report import human_report

    db = human_db_path(args)
    out = Path(args.human_out) if args.human_out else db.parent / "report"
    report = human_report(db, out)
    print(
        json.dumps(
            {
                "out": str(out),
                "pointwise_models": list(report["pointwise"]),
                "pairwise": [f"{e['model']} vs {e['opponent']}" for e in report["pairwise"]],
                "figures": report["figures"],
            },
            indent=2,
        )
    )
    print((out / "human_report.md").read_text())
    return 0


def _add_human_report_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("esevo report human")
    g.add_argument("--db", help="human evaluation SQLite file (default from the config)")
    g.add_argument("--config", help="YAML run config, to find the database")
    g.add_argument("--run-dir", dest="human_run_dir", help="run directory of the database")
    g.add_argument(
        "--human-out", dest="human_out", help="output folder (default: report/ beside the database)"
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `serve`; add `human` to `report` (extending the evaluation report's parser)."""
    p = sub.add_parser("serve", help="serve the run's models (OpenAI API + human evaluation)")
    p.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    p.add_argument("--run-dir", help="run directory with m0/, iter_1/, ... (default from config)")
    p.add_argument("--host", help="override serve.host")
    p.add_argument("--port", type=int, help="override serve.port")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=cmd_serve)

    report = sub.choices.get("report")
    if report is None:
        report = sub.add_parser("report", help="reports; `report human`: human evaluation")
        report.add_argument("run_dir", choices=["human"])
        previous = None
    else:
        previous = report.get_default("func")
    _add_human_report_args(report)

    def dispatch(args: argparse.Namespace) -> int:
        if args.run_dir == "human":
            return cmd_report_human(args)
        return previous(args)

    report.set_defaults(func=dispatch)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from esevo_ray.serving.bench import bench_serve_app

    cfg = _load(args)
    report = bench_serve_app(
        cfg,
        args.run_dir,
        model=args.model,
        clients=args.clients,
        duration_s=args.duration,
        max_tokens=args.max_tokens,
    )
    from esevo_ray.io import emit_json

    emit_json(report, args.out)
    return 0


def add_bench_parsers(bench: argparse._SubParsersAction) -> None:
    """Add `serve` to the `esevo bench` subcommands."""
    p = bench.add_parser("serve", help="requests/s, p50/p99 latency, TTFT; batching on and off")
    p.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    p.add_argument("--run-dir", help="run directory (default from config)")
    p.add_argument("--model", default="base", help="model name to load (default: base)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per setting")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=cmd_bench_serve)
