"""`esevo generate`, `esevo inspect pairs` and `esevo bench generate`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from esevo_ray.cli.common import (
    adapter_arg,
    add_config_args,
    base_before,
    command_group,
    existing,
    iteration,
    positive,
    run_of,
    stage_input,
)
from esevo_ray.errors import UsageError

logger = logging.getLogger(__name__)
BASE = "none"


def _generator_adapter(args: argparse.Namespace, cfg, layout) -> Path | None:
    """--adapter, else the run's M^{t-1}: its adapter, or None where it is the base model
    (M0 with evolve.init: base)."""
    if args.adapter is not None:
        return None if args.adapter.lower() == BASE else adapter_arg(args.adapter)
    models, t = layout.models(), args.iteration
    if base_before(cfg, layout, t):
        return None
    if t - 1 not in models:
        raise UsageError(
            f"m{t - 1} in {layout.root} is not finished, and it generates the pairs of "
            f"--iteration {t}: train it first (`esevo {'sft' if t == 1 else 'dpo'}`), or pass "
            f"--adapter (a LoRA folder, or '{BASE}' for the base model)"
        )
    return models[t - 1]


def cmd_generate(args: argparse.Namespace) -> int:
    """Pairs of one iteration as `esevo evolve` makes them: on the iteration's seeds (its own
    part with evolve.seed_split), with the chosen side of evolve.chosen."""
    from esevo_ray.generation.pipeline import generate_pairs
    from esevo_ray.models import resolve_model
    from esevo_ray.pipeline.evolve import iteration_seeds

    cfg, layout = run_of(args, writes=True)
    contexts = stage_input(
        args, args.contexts, layout.seed_contexts, "--contexts", "seed contexts", "data prepare"
    )
    adapter = _generator_adapter(args, cfg, layout)
    if not args.contexts:
        contexts = iteration_seeds(cfg, layout, args.iteration)
    out = Path(args.out) if args.out else layout.pairs(args.iteration)
    model = resolve_model(args.model or cfg.model.path)
    manifest = generate_pairs(
        cfg, contexts, out, model_path=model, adapter=adapter, iteration=args.iteration,
        chosen=cfg.evolve.chosen,
    )  # fmt: skip
    print(json.dumps({"out": str(out), **manifest}, indent=2))
    return 0


def cmd_inspect_pairs(args: argparse.Namespace) -> int:
    from esevo_ray.generation.inspect import format_summary, pairs_summary

    summary = pairs_summary(existing(args.path, "pairs", "pairs folder or file"), args.samples)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_bench_generate(args: argparse.Namespace) -> int:
    from esevo_ray.generation.bench import bench_generate
    from esevo_ray.io import check_report_file, emit_json
    from esevo_ray.models import resolve_model

    check_report_file(args.out)
    cfg, layout = run_of(args, writes=False)
    contexts = stage_input(
        args, args.contexts, layout.seed_contexts, "--contexts", "contexts", "data prepare"
    )
    report = bench_generate(
        cfg, contexts, resolve_model(cfg.model.path), n=args.contexts_n, naive_n=args.naive_n,
        repeats=args.repeats,
    )  # fmt: skip
    emit_json(report, args.out)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="generate iteration t's preference pairs with M^{t-1} (Ray Data + engines)"
    )
    add_config_args(p)
    p.add_argument("--iteration", type=iteration, default=1, help="t: these pairs train m<t>")
    p.add_argument(
        "--contexts",
        help="seed contexts Parquet (default: the run's, or m<t>/seed_contexts.parquet, "
        "iteration t's part, with evolve.seed_split)",
    )
    p.add_argument("--out", help="output folder (default: <run>/m<t>/pairs)")
    p.add_argument("--model", help="base model folder (default: model.path or SmolLM2)")
    p.add_argument(
        "--adapter",
        help=f"LoRA adapter of the generator (default: the run's m<t-1>, which must be "
        f"finished; '{BASE}': the base model)",
    )
    p.set_defaults(func=cmd_generate)

    inspect = command_group(sub, "inspect", "summarise a dataset")
    p = inspect.add_parser("pairs", help="row counts, fallback rates, lengths, samples")
    p.add_argument("path", help="pairs folder (<run>/m<t>/pairs) or Parquet file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--samples", type=int, default=3)
    p.set_defaults(func=cmd_inspect_pairs)


def add_bench_parsers(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser(
        "generate", help="tokens/s: Ray Data pipeline vs engine alone vs naive loop"
    )
    add_config_args(p)
    p.add_argument("--contexts", help="contexts Parquet (default: the run's seed contexts)")
    p.add_argument("-n", "--contexts-n", type=positive, default=128, help="contexts per run")
    p.add_argument("--naive-n", type=positive, default=8, help="contexts for the naive loop")
    p.add_argument("--repeats", type=positive, default=3)
    p.add_argument("--out", help="also write the JSON report here")
    p.set_defaults(func=cmd_bench_generate)
