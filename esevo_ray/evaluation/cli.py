"""`esevo report` and `esevo judge`: registered on the `esevo` parser by `add_parsers(sub)`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from esevo_ray.evaluation.report import find_stages, write_report
    from esevo_ray.evaluation.tables import metrics_table

    path = write_report(args.run_dir, relevance=args.relevance)
    stages = [s for s in find_stages(args.run_dir) if s.metrics is not None]
    print(metrics_table({s.label: s.metrics for s in stages}))
    print(f"\nreport: {path}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from esevo_ray.config import load_config
    from esevo_ray.evaluation.judge import JudgeError, judge_file
    from esevo_ray.evaluation.judge_scores import summarize

    overrides = list(args.overrides or [])
    if args.samples is not None:
        overrides.append(f"eval.judge_samples={args.samples}")
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path(args.responses).parent / "judge_scores.parquet"
    n_samples = None if cfg.eval.judge_samples <= 0 else cfg.eval.judge_samples
    try:
        scores = judge_file(
            args.responses,
            out,
            cfg.eval.judge,
            n_samples=n_samples,
            base_url=args.endpoint,
            model=args.model,
        )
    except JudgeError as e:
        print(f"esevo: error: {e}", file=sys.stderr)
        return 2
    summary = summarize(scores)
    print(json.dumps({"out": str(out), "verdicts": scores.num_rows, "summary": summary}, indent=2))
    missing = scores.column("score").null_count
    if scores.num_rows and missing == scores.num_rows:
        print("esevo: error: every verdict is missing; see the error column", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the `report` and `judge` subcommands to the `esevo` subparsers."""
    p = sub.add_parser("report", help="write <run>/report/report.md and plots")
    p.add_argument("run_dir", help="run directory (<output_dir>/<name>)")
    p.add_argument(
        "--relevance",
        choices=["embedding", "overlap"],
        default="embedding",
        help="relevance/similarity measure (default: MiniLM embedding cosine)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("judge", help="LLM-as-a-judge scores of a responses.parquet")
    p.add_argument("--responses", required=True, help="responses.parquet (EVAL_RESPONSES)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    p.add_argument("--model", help="judge model name at the endpoint")
    p.add_argument("--out", help="output parquet (default: judge_scores.parquet beside input)")
    p.add_argument(
        "--samples", type=int, help="contexts to sample (default eval.judge_samples; 0 = all)"
    )
    p.add_argument("--config", help="YAML run config for eval.judge settings")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=cmd_judge)
