"""`esevo evolve`: the whole loop, resumable."""

from __future__ import annotations

import argparse

from esevo_ray.cli.common import add_config_args, add_new_run_arg, loop_config
from esevo_ray.generation.fallback import fallback_lines
from esevo_ray.layout import RunLayout, read_manifest
from esevo_ray.profile import table


def summary(layout: RunLayout) -> str:
    """The M0..MT metrics table and where the run's artifacts are."""
    from esevo_ray.evaluation.report import find_stages
    from esevo_ray.evaluation.tables import metrics_table

    stages = find_stages(layout.root)
    lines = [metrics_table({s.label: s.metrics for s in stages}), "", f"run:     {layout.root}"]
    for t, adapter in layout.models().items():
        pairs = layout.pairs(t) if t else None
        model = f"adapter {adapter}" if adapter else "the base model (no adapter)"
        lines.append(f"m{t:<7d} {model}" + (f"  pairs {pairs}" if pairs and pairs.exists() else ""))
    lines.append(f"report:  {layout.report}")
    lines.append(f"manifest: {layout.manifest}")
    stages = read_manifest(layout.manifest)["stages"] if layout.manifest.exists() else {}
    fallbacks = fallback_lines(stages)
    if fallbacks:
        lines += ["", "Golden fallbacks per pairs stage (`fallback` in the manifest):", *fallbacks]
    lines += ["", "Where the time went (seconds; `profile` in the manifest):", table(stages)]
    return "\n".join(lines)


def cmd_evolve(args: argparse.Namespace) -> int:
    from esevo_ray.pipeline.evolve import evolve

    print(summary(evolve(loop_config(args))))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evolve", help="data -> SFT -> (pairs -> DPO -> eval) x T -> report")
    add_config_args(p)
    add_new_run_arg(p)
    p.set_defaults(func=cmd_evolve)
