"""`esevo evolve`: the whole loop, resumable."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def summary(root: Path) -> str:
    """The M0..MT metrics table and where the run's artifacts are."""
    from esevo_ray.evaluation.report import find_stages
    from esevo_ray.evaluation.tables import metrics_table

    stages = find_stages(root)
    lines = [metrics_table({s.label: s.metrics for s in stages}), "", f"run:     {root}"]
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / "adapter").exists()):
        pairs = folder / "pairs"
        lines.append(
            f"{folder.name:8s} adapter {folder / 'adapter'}"
            + (f"  pairs {pairs}" if pairs.exists() else "")
        )
    lines.append(f"report:  {root / 'report' / 'report.md'}")
    lines.append(f"manifest: {root / 'manifest.json'}")
    return "\n".join(lines)


def cmd_evolve(args: argparse.Namespace) -> int:
    from esevo_ray.cli import load_args_config
    from esevo_ray.pipeline import evolve

    cfg = load_args_config(args)
    if args.new_run:
        cfg = cfg.model_copy(update={"name": f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"})
    root = evolve(cfg)
    print(summary(root))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from esevo_ray.cli import add_config_args

    p = sub.add_parser("evolve", help="data -> SFT -> (pairs -> DPO -> eval) x T -> report")
    add_config_args(p)
    p.add_argument("--new-run", action="store_true", help="start a new run directory (name-<time>)")
    p.set_defaults(func=cmd_evolve)
