"""`esevo serve`, `esevo report human` and `esevo bench serve`.

`add_parsers(sub)` adds `serve` and extends an existing `report` parser (the evaluation
report's, whose positional run_dir then also accepts the word `human`), so it is registered
after `esevo_ray.cli.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from esevo_ray.cli.common import existing, load_args_config, positive, positive_list, seconds
from esevo_ray.errors import UsageError


def _load(args: argparse.Namespace):
    for key in ("host", "port"):
        if getattr(args, key, None) is not None:
            # As JSON, a YAML scalar that stays what was typed (e.g. the host '::').
            args.overrides = [
                *(getattr(args, "overrides", None) or []),
                f"serve.{key}={json.dumps(getattr(args, key))}",
            ]
    return load_args_config(args)


def _run_dir(args: argparse.Namespace) -> Path | None:
    """--run-dir, which must be a folder; None: the config's run."""
    if not args.run_dir:
        return None
    return existing(args.run_dir, "--run-dir", "run directory", folder=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from ray import serve

    from esevo_ray.serving.deploy import start_app

    cfg = _load(args)
    run_dir = _run_dir(args)  # before Ray starts
    url = start_app(cfg, run_dir)
    print(f"serving on {url}/v1 (chat completions), {url}/human (human evaluation); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # how serving ends
        pass
    finally:
        serve.shutdown()
    # Its one line once Serve is down, and 130 as for any command stopped with Ctrl-C.
    print("esevo: stopped; Serve shut down (every rating and vote was stored as it came)",
          file=sys.stderr)  # fmt: skip
    return 130


def human_db_path(args: argparse.Namespace) -> Path:
    """--db, else the config's serve.human_eval.db_path, else <run>/human_eval/db.sqlite."""
    if args.db:
        return existing(args.db, "--db", "human-evaluation database")
    from esevo_ray.serving.deploy import human_db

    return human_db(_load(args), args.human_run_dir)


def cmd_report_human(args: argparse.Namespace) -> int:
    from esevo_ray.human_eval.report import human_report

    db = human_db_path(args)
    out = Path(args.human_out) if args.human_out else db.parent / "report"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--human-out {out} is not a folder; name a folder for the report")
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


HUMAN_USAGE = "esevo report human [--db DB | --config CONFIG | --run-dir DIR] [--human-out OUT]"


def _add_human_report_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("esevo report human", "the human evaluation's tables and figures")
    g.add_argument("--db", help="human evaluation SQLite file (default from the config)")
    g.add_argument("--config", help="YAML run config, to find the database")
    g.add_argument(
        "--run-dir", dest="human_run_dir", metavar="DIR", help="run directory of the database"
    )
    g.add_argument(
        "--human-out", dest="human_out", metavar="OUT",
        help="output folder (default: report/ beside the database)",
    )  # fmt: skip


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `serve`; add `human` to `report` (extending the evaluation report's parser)."""
    p = sub.add_parser("serve", help="serve the run's models (OpenAI API + human evaluation)")
    p.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    p.add_argument("--run-dir", help="run directory with m0/, m1/, ... (default from config)")
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
        report.usage = (
            f"{report.format_usage().removeprefix('usage: ').strip()}\n       {HUMAN_USAGE}"
        )
    _add_human_report_args(report)

    def dispatch(args: argparse.Namespace) -> int:
        if args.run_dir == "human":
            return cmd_report_human(args)
        given = {"--db": args.db, "--config": args.config, "--run-dir": args.human_run_dir,
                 "--human-out": args.human_out}  # fmt: skip
        if flags := [flag for flag, value in given.items() if value]:
            raise UsageError(
                f"{', '.join(flags)}: options of `esevo report human`; the report of run "
                f"{args.run_dir} takes none of them"
            )
        return previous(args)

    report.set_defaults(func=dispatch)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from esevo_ray.io import check_report_file, emit_json
    from esevo_ray.serving.bench import bench_serve_app, soak_app

    check_report_file(args.out)
    cfg = _load(args)
    if args.max_tokens > cfg.serve.max_tokens:  # else every served request is refused
        raise UsageError(
            f"--max-tokens {args.max_tokens}: the app refuses more than serve.max_tokens "
            f"({cfg.serve.max_tokens})"
        )
    run_dir = _run_dir(args)
    if args.soak:
        report = soak_app(
            cfg,
            run_dir,
            model=args.model,
            clients=args.soak_clients,
            duration_s=args.soak,
            max_tokens=args.max_tokens,
        )
    else:
        report = bench_serve_app(
            cfg,
            run_dir,
            model=args.model,
            clients=tuple(args.clients),
            duration_s=args.duration,
            max_tokens=args.max_tokens,
        )
    emit_json(report, args.out)
    return 0


def add_bench_parsers(bench: argparse._SubParsersAction) -> None:
    """Add `serve` to the `esevo bench` subcommands."""
    p = bench.add_parser(
        "serve", help="served tokens/s, latency and TTFT beside the offline engine; --soak"
    )
    p.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    p.add_argument("--run-dir", help="run directory (default from config)")
    p.add_argument("--model", default="current", help="served model name (default: current)")
    p.add_argument(
        "--clients", type=positive_list, default=(1, 8, 32),
        help="concurrent clients to try, comma-separated (default 1,8,32)",
    )  # fmt: skip
    p.add_argument("--duration", type=seconds, default=20.0, help="seconds per client count")
    p.add_argument("--max-tokens", type=positive, default=64)
    p.add_argument(
        "--soak", type=seconds, default=None, help="instead: soak for this many seconds (e.g. 120)"
    )
    p.add_argument("--soak-clients", type=positive, default=32, help="clients during --soak")
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=cmd_bench_serve)
