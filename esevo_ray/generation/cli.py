"""`esevo generate` and `esevo inspect pairs`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_generate(args: argparse.Namespace) -> int:
    from esevo_ray.cli import load_args_config, run_dir
    from esevo_ray.generation.pipeline import generate_pairs
    from esevo_ray.models import resolve_model

    cfg = load_args_config(args)
    root = run_dir(cfg)
    contexts = Path(args.contexts) if args.contexts else root / "data" / "seed_contexts.parquet"
    if not contexts.exists():
        raise FileNotFoundError(
            f"no seed contexts at {contexts}: run `esevo data prepare --config {args.config}` "
            "or pass --contexts"
        )
    out = Path(args.out) if args.out else root / f"iter_{args.iteration}" / "pairs"
    model = resolve_model(args.model or cfg.model.path)
    manifest = generate_pairs(
        cfg, contexts, out, model_path=model, adapter=args.adapter, iteration=args.iteration
    )
    print(json.dumps({"out": str(out), **manifest}, indent=2))
    return 0


def cmd_inspect_pairs(args: argparse.Namespace) -> int:
    from esevo_ray.generation.inspect import format_summary, pairs_summary

    summary = pairs_summary(args.path, samples=args.samples)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from esevo_ray.cli import add_config_args

    p = sub.add_parser("generate", help="generate preference pairs with M^t (Ray Data + engines)")
    add_config_args(p)
    p.add_argument("--contexts", help="seed contexts Parquet (default: the run's data folder)")
    p.add_argument("--out", help="output folder (default: <run>/iter_<N>/pairs)")
    p.add_argument("--model", help="base model folder (default: model.path or SmolLM2)")
    p.add_argument("--adapter", help="LoRA adapter of M^t (default: none, the base model)")
    p.add_argument("--iteration", type=int, default=1, help="t+1, the iteration these pairs train")
    p.set_defaults(func=cmd_generate)

    inspect = sub.add_parser("inspect", help="summarise a dataset").add_subparsers(
        dest="inspect_command", required=True
    )
    p = inspect.add_parser("pairs", help="row counts, fallback rates, lengths, samples")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.add_argument("--samples", type=int, default=3)
    p.set_defaults(func=cmd_inspect_pairs)


def cmd_bench_generate(args: argparse.Namespace) -> int:
    from esevo_ray.cli import load_args_config, run_dir
    from esevo_ray.generation.bench import bench_generate
    from esevo_ray.io import emit_json
    from esevo_ray.models import resolve_model

    cfg = load_args_config(args)
    contexts = (
        Path(args.contexts) if args.contexts else run_dir(cfg) / "data" / "seed_contexts.parquet"
    )
    if not contexts.exists():
        raise FileNotFoundError(
            f"no contexts at {contexts}: run `esevo data prepare` or pass --contexts"
        )
    report = bench_generate(
        cfg, contexts, resolve_model(cfg.model.path), n=args.contexts_n, naive_n=args.naive_n,
        repeats=args.repeats,
    )  # fmt: skip
    emit_json(report, args.out)
    return 0


def add_bench_parsers(bench: argparse._SubParsersAction) -> None:
    from esevo_ray.cli import add_config_args

    p = bench.add_parser(
        "generate", help="tokens/s: Ray Data pipeline vs engine alone vs naive loop"
    )
    add_config_args(p)
    p.add_argument("--contexts", help="contexts Parquet (default: the run's seed contexts)")
    p.add_argument("-n", "--contexts-n", type=int, default=128, help="contexts per run")
    p.add_argument("--naive-n", type=int, default=8, help="contexts for the naive loop")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="also write the JSON report here")
    p.set_defaults(func=cmd_bench_generate)
