"""`esevo` command line: parse arguments, load the config, call one library function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

# Everything runs offline: no code path may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

from esevo_ray.config import ConfigError, RunConfig, load_config  # noqa: E402
from esevo_ray.data.dialogue import DataError  # noqa: E402
from esevo_ray.pipeline.manifest import RunConflict  # noqa: E402
from esevo_ray.schema import SchemaError  # noqa: E402

logger = logging.getLogger("esevo_ray")

USER_ERRORS = (ConfigError, DataError, SchemaError, RunConflict, FileNotFoundError, ValueError)


def load_args_config(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides or [])
    if getattr(args, "on_bad_record", None):
        overrides.append(f"data.on_bad_record={args.on_bad_record}")
    return load_config(args.config, overrides)


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from esevo_ray.data.prepare import prepare_data

    cfg = load_args_config(args)
    out = Path(args.out) if args.out else run_dir(cfg) / "data"
    report = prepare_data(cfg.data, out)
    print(
        json.dumps(
            {"out": str(out), "rows": report["rows"], "skipped": report["skipped"]}, indent=2
        )
    )
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from esevo_ray.data.prepare import data_dir, esconv_stats, load_esconv_splits

    if args.dataset != "esconv":
        raise ValueError(f"--dataset {args.dataset!r}: only 'esconv' is available here")
    splits = load_esconv_splits(data_dir(), args.on_bad_record or "error")
    dialogues = [d for s in args.splits.split(",") for d in splits[s].items]
    stats = esconv_stats(dialogues)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for key, value in stats.items():
            print(f"{key:32s} {value}")
    return 0


def cmd_model_prepare(args: argparse.Namespace) -> int:
    from esevo_ray.models import prepare_default_model

    print(prepare_default_model(force=args.force))
    return 0


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="YAML run config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esevo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare datasets, print statistics").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser("prepare", help="write the run's Parquet datasets")
    add_config_args(p)
    p.add_argument("--out", help="output folder (default: <output_dir>/<name>/data)")
    p.add_argument("--on-bad-record", choices=["error", "skip"])
    p.set_defaults(func=cmd_data_prepare)

    p = data.add_parser("stats", help="Table 1 statistics of a dataset")
    p.add_argument("--dataset", default="esconv")
    p.add_argument("--splits", default="train,test")
    p.add_argument("--json", action="store_true")
    p.add_argument("--on-bad-record", choices=["error", "skip"])
    p.set_defaults(func=cmd_data_stats)

    model = sub.add_parser("model", help="prepare the default model").add_subparsers(
        dest="model_command", required=True
    )
    p = model.add_parser("prepare", help="convert the packaged SmolLM2 GGUF to safetensors")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_model_prepare)

    # Each stage's module adds its own subcommands; the order matters once: serving extends
    # the `report` command that evaluation adds (`esevo report human`).
    from esevo_ray.evaluation import cli as evaluation
    from esevo_ray.generation import cli as generation
    from esevo_ray.pipeline import cli as pipeline
    from esevo_ray.serving import cli as serving
    from esevo_ray.training import cli as training

    for module in (generation, training, evaluation, serving, pipeline):
        module.add_parsers(sub)
    bench = sub.add_parser("bench", help="benchmarks (results go to BENCHMARKS.md)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    for module in (generation, training, serving, evaluation):
        module.add_bench_parsers(bench_sub)
    return parser


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Ray Data logs every execution plan and operator; the pipeline logs its own progress.
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"esevo: error: {e}", file=sys.stderr)
        return 2


def run_job(func: Callable[[RunConfig], object]) -> None:
    """Entry point for `jobs/*.py`: `--config FILE [key=value ...]` then `func(cfg)`."""
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args()
    setup_logging()
    try:
        func(load_config(args.config, args.overrides))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
