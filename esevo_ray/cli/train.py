"""`esevo sft`, `esevo dpo` and `esevo bench train`.

By default both write where the loop would: `esevo sft` makes the run's m0, `esevo dpo
--iteration t` trains m<t> from m<t-1> on the pairs of m<t>.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from esevo_ray.cli.common import (
    adapter_arg,
    add_config_args,
    base_before,
    existing,
    iteration,
    load_args_config,
    positive,
    run_of,
    stage_input,
)

FRESH = "none"


def _print_result(out: Path) -> None:
    from esevo_ray.training.raytrain import read_summary

    summary = read_summary(out)
    # train_loss covers the steps after resumed_from_step (null: the whole run).
    keys = ("global_step", "resumed_from_step", "train_loss", "best_eval_loss", "stopped_early",
            "wall_seconds")  # fmt: skip
    print(json.dumps({"out": str(out), **{k: summary.get(k) for k in keys}}, indent=2))


def _init_adapter(value: str | None, default: Path) -> Path | None:
    if value is not None and value.lower() == FRESH:
        return None
    return adapter_arg(value or default, "--init")


def cmd_sft(args: argparse.Namespace) -> int:
    from esevo_ray.training.sft import train_sft

    cfg, layout = run_of(args, writes=True)
    data = stage_input(
        args, args.data, layout.data, "--data", "prepared data folder", "data prepare"
    )
    out = train_sft(cfg, data, Path(args.out) if args.out else layout.adapter(0))
    _print_result(out)
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    from esevo_ray.training.dpo import train_dpo

    (cfg, layout), t = run_of(args, writes=True), args.iteration
    pairs = stage_input(
        args, args.pairs, layout.pairs(t), "--pairs", "preference pairs",
        f"generate --iteration {t}",
    )  # fmt: skip
    default = None if base_before(cfg, layout, t) else layout.adapter(t - 1)
    init = _init_adapter(args.init, default)
    out = train_dpo(cfg, pairs, init, Path(args.out) if args.out else layout.adapter(t))
    _print_result(out)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from esevo_ray.io import check_report_file, emit_json
    from esevo_ray.training.bench import bench_train

    check_report_file(args.out)
    cfg = load_args_config(args)
    fresh = args.init is None or args.init.lower() == FRESH
    init = None if fresh else adapter_arg(args.init, "--init")
    pairs = existing(args.pairs, "--pairs", "preference pairs")
    report = bench_train(
        cfg, pairs, init, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
        compare=args.compare,
    )  # fmt: skip
    emit_json(report, args.out)
    return 0


def cmd_bench_memory(args: argparse.Namespace) -> int:
    from esevo_ray.io import check_report_file, emit_json
    from esevo_ray.training.memcheck import memory_check

    check_report_file(args.out)
    cfg = load_args_config(args)
    report = memory_check(
        cfg, shape=args.shape, stages=args.stages, steps=args.steps,
        device=args.device, budget_gb=args.budget_gb,
    )  # fmt: skip
    emit_json(report, args.out)
    if "skipped" in report:
        print(report["skipped"], file=sys.stderr)
    return 1 if report.get("fits") is False else 0


def _stages(text: str) -> tuple[str, ...]:
    # Comma-separated, not nargs="+", which would swallow the key=value overrides.
    stages = tuple(text.split(","))
    if not set(stages) <= {"sft", "dpo"}:
        raise argparse.ArgumentTypeError(f"stages are sft and dpo, comma-separated; got {text!r}")
    return stages


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="train the SFT LoRA adapter M0 on Ray Train")
    add_config_args(p)
    p.add_argument("--data", help="folder with sft.parquet (default: <run>/data)")
    p.add_argument("--out", help="adapter folder (default: the run's m0 adapter)")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("dpo", help="train m<t> from m<t-1> on preference pairs on Ray Train")
    add_config_args(p)
    p.add_argument("--iteration", type=iteration, default=1, help="t: the model to train, m<t>")
    p.add_argument("--pairs", help="pairs Parquet file or folder (default: <run>/m<t>/pairs)")
    p.add_argument(
        "--init",
        help=f"adapter M^t to start from and to use as the reference (default: <run>/m<t-1>/"
        f"adapter); '{FRESH}' trains a fresh adapter against the base model",
    )
    p.add_argument("--out", help="adapter folder (default: <run>/m<t>/adapter)")
    p.set_defaults(func=cmd_dpo)


def add_bench_parsers(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("train", help="DPO pairs/s and tokens/s, two modes side by side")
    add_config_args(p)
    p.add_argument(
        "--compare",
        choices=("ray", "lm-head"),  # training/bench.py COMPARISONS
        default="ray",
        help="ray: Ray Train vs a plain process; lm-head: TRL's LM head on every position vs "
        "labelled positions only (in-process)",
    )
    p.add_argument("--pairs", required=True, help="pairs Parquet file or folder (PAIRS schema)")
    p.add_argument("--init", help=f"adapter M^t (default or '{FRESH}': a fresh adapter)")
    p.add_argument("--steps", type=positive, default=8, help="measured steps after warm-up")
    p.add_argument(
        "--warmup", type=positive, default=2,
        help="steps left out of the measurement (1 or more: it starts at the end of one)",
    )  # fmt: skip
    p.add_argument("--repeats", type=positive, default=3, help="runs of each mode (medians)")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.set_defaults(func=cmd_bench_train)

    p = bench.add_parser(
        "memory", help="peak GPU memory of SFT/DPO steps on a random model of the config's shape"
    )
    add_config_args(p)
    p.add_argument(
        "--shape",
        help="folder with a config.json, or a known shape name (default: the config's model.path)",
    )
    p.add_argument("--stages", type=_stages, default=("sft", "dpo"), help="sft,dpo (default)")
    p.add_argument("--steps", type=positive, default=3, help="optimizer steps per stage")
    p.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda",
        help="cpu: run the same steps without a measurement",
    )  # fmt: skip
    p.add_argument("--budget-gb", type=float, default=48.0, help="memory the stages must fit in")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.set_defaults(func=cmd_bench_memory)
