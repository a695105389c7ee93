"""`esevo sft`, `esevo dpo` and `esevo bench train`: parse, load the config, call the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from esevo_ray.config import ConfigError, RunConfig, load_config

FRESH = "none"


def _run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def _print_result(out: Path) -> None:
    summary = json.loads((out / "train_summary.json").read_text())
    keys = ("global_step", "train_loss", "best_eval_loss", "stopped_early", "wall_seconds")
    print(json.dumps({"out": str(out), **{k: summary.get(k) for k in keys}}, indent=2))


def cmd_sft(args: argparse.Namespace) -> int:
    from esevo_ray.training.sft import train_sft

    cfg = load_config(args.config, args.overrides)
    run = _run_dir(cfg)
    out = train_sft(
        cfg, Path(args.data) if args.data else run / "data", Path(args.out or run / "sft")
    )
    _print_result(out)
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    from esevo_ray.training.dpo import train_dpo

    cfg = load_config(args.config, args.overrides)
    init = None if args.init.lower() == FRESH else Path(args.init)
    out = train_dpo(cfg, Path(args.pairs), init, Path(args.out or _run_dir(cfg) / "dpo"))
    _print_result(out)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from esevo_ray.io import emit_json
    from esevo_ray.training.bench import bench_train

    cfg = load_config(args.config, args.overrides)
    init = None if args.init is None or args.init.lower() == FRESH else Path(args.init)
    report = bench_train(
        cfg, Path(args.pairs), init, steps=args.steps, warmup=args.warmup, repeats=args.repeats
    )
    emit_json(report, args.out)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `sft` and `dpo` to the `esevo` subcommands."""
    p = sub.add_parser("sft", help="train the SFT LoRA adapter M0 on Ray Train")
    p.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    p.add_argument("--data", help="folder with sft.parquet (default: <output_dir>/<name>/data)")
    p.add_argument("--out", help="adapter folder (default: <output_dir>/<name>/sft)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. sft.max_steps=20")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("dpo", help="train M^{t+1} from M^t on preference pairs on Ray Train")
    p.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    p.add_argument("--pairs", required=True, help="pairs Parquet file or folder (PAIRS schema)")
    p.add_argument(
        "--init",
        required=True,
        help=f"adapter M^t to start from and to use as the reference; '{FRESH}' trains a "
        "fresh adapter against the base model",
    )
    p.add_argument("--out", help="adapter folder (default: <output_dir>/<name>/dpo)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. dpo.beta=0.1")
    p.set_defaults(func=cmd_dpo)


def add_bench_parsers(bench: argparse._SubParsersAction) -> None:
    """Add `train` to the `esevo bench` subcommands."""
    p = bench.add_parser("train", help="DPO pairs/s and tokens/s: Ray Train vs a plain process")
    p.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    p.add_argument("--pairs", required=True, help="pairs Parquet file or folder (PAIRS schema)")
    p.add_argument("--init", help=f"adapter M^t (default or '{FRESH}': a fresh adapter)")
    p.add_argument("--steps", type=int, default=8, help="measured steps after warm-up")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the measurement")
    p.add_argument("--repeats", type=int, default=3, help="runs of each mode (medians)")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=cmd_bench_train)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (jobs/train.py): `sft ...`, `dpo ...` or `bench train ...`."""
    parser = argparse.ArgumentParser(prog="train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    add_bench_parsers(bench)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
