"""`esevo data prepare`, `esevo data stats` and `esevo model prepare`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from esevo_ray.cli.common import (
    UsageError,
    add_config_args,
    check_output_dir,
    claim_run,
    command_group,
    load_args_config,
)
from esevo_ray.layout import RunLayout


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from esevo_ray.data.prepare import prepare_data

    cfg = load_args_config(args)
    if not args.out:  # the run's folder is not touched unless `out` is inside it
        check_output_dir(cfg)
    layout = RunLayout.of(cfg)
    claim_run(args, cfg, layout, args.out)  # before a migration, which it then holds
    if not args.out:
        layout.migrate()
    out = Path(args.out) if args.out else layout.data
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
        raise UsageError(f"--dataset {args.dataset!r}: only 'esconv' is available here")
    data = load_args_config(args).data  # the defaults without --config
    splits = load_esconv_splits(data_dir(data), data.on_bad_record)
    names = list(dict.fromkeys(args.splits.split(",")))  # a split named twice counts once
    unknown = sorted(set(names) - set(splits))
    if unknown:
        raise UsageError(f"--splits: unknown splits {unknown}; known: {sorted(splits)}")
    dialogues = [d for s in names for d in splits[s].items]
    stats = esconv_stats(dialogues)
    if data.on_bad_record == "skip":
        stats["skipped_records"] = {s: splits[s].skipped for s in names}
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data = command_group(sub, "data", "prepare datasets, print statistics")
    p = data.add_parser("prepare", help="write the run's Parquet datasets")
    add_config_args(p)
    p.add_argument("--out", help="output folder (default: <run>/data)")
    p.add_argument("--on-bad-record", choices=["error", "skip"])
    p.set_defaults(func=cmd_data_prepare)

    p = data.add_parser("stats", help="Table 1 statistics of a dataset")
    add_config_args(p, required=False)  # data.data_dir: where the data is
    p.add_argument(
        "--dataset", default="esconv", help="the dataset (esconv: the one in the data folder)"
    )
    p.add_argument("--splits", default="train,test", help="comma-separated ESConv splits")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--on-bad-record", choices=["error", "skip"],
        help="a malformed record stops (error, the default) or is counted and skipped",
    )  # fmt: skip
    p.set_defaults(func=cmd_data_stats)

    model = command_group(sub, "model", "prepare the default model")
    p = model.add_parser("prepare", help="convert the packaged SmolLM2 GGUF to safetensors")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_model_prepare)
