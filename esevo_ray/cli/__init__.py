"""`esevo` command line: parse arguments, load the config, call one library function.

One module per stage registers its subcommands (`add_parsers`) and benchmarks
(`add_bench_parsers`); `common` holds what they share. The library never imports this package.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from esevo_ray.cli import data, evaluate, evolve, generate, serve, train
from esevo_ray.cli.common import USER_ERRORS, command_group, setup_logging

# Registration order is the order of `esevo --help`; `serve` extends the `report` command
# that `evaluate` adds (`esevo report human`), so it comes after it.
STAGES = (data, generate, train, evaluate, serve, evolve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esevo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in STAGES:
        module.add_parsers(sub)
    bench_sub = command_group(sub, "bench", "benchmarks (results go to BENCHMARKS.md)")
    for module in STAGES:
        if hasattr(module, "add_bench_parsers"):
            module.add_bench_parsers(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # key=value overrides after a later flag (`evolve --config c a=1 --new-run b=2`): argparse
    # takes only the first run of them as the positional list.
    takes = hasattr(args, "overrides")
    if unknown := [a for a in rest if not (takes and _is_override(a))]:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if rest:
        args.overrides = [*(args.overrides or []), *rest]
    setup_logging(args.verbose)
    try:
        with contextlib.ExitStack() as args.held:  # what a command holds while it runs
            return args.func(args)
    except USER_ERRORS as e:
        print(f"esevo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: stopped on purpose, a line instead of a traceback
        again = getattr(args, "go_on", "the same command again")
        print(
            "esevo: interrupted; what had finished is kept (stages, batches, checkpoints, "
            f"verdicts): run {again} to go on from there",
            file=sys.stderr,
        )
        return 130


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def run_job(command: list[str]) -> None:
    """Entry point of `jobs/*.py`: `esevo <command> <the script's arguments>`; `-v` among
    them is esevo's own flag, which goes before the command."""
    sys.exit(main(job_argv(command, sys.argv[1:])))


def job_argv(command: list[str], given: list[str]) -> list[str]:
    verbose = [a for a in given if a in ("-v", "--verbose")]
    return [*verbose, *command, *(a for a in given if a not in verbose)]
