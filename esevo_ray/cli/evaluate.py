"""`esevo eval`, `esevo report`, `esevo judge`, `esevo ablate`, `esevo baselines` and
`esevo bench llm`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from esevo_ray.cli.common import (
    adapter_arg,
    add_config_args,
    add_new_run_arg,
    command_group,
    existing,
    load_args_config,
    loop_config,
    positive,
    run_holding,
    run_of,
    stage_input,
)
from esevo_ray.errors import UsageError
from esevo_ray.layout import RunLayout, label_folder
from esevo_ray.pipeline.manifest import run_lock


def cmd_report(args: argparse.Namespace) -> int:
    from esevo_ray.evaluation.report import find_stages, write_report
    from esevo_ray.evaluation.tables import metrics_table

    layout = RunLayout(existing(args.run_dir, "run_dir", "run directory", folder=True))
    layout.migrate()
    path = write_report(layout.root, relevance=args.relevance)
    stages = [s for s in find_stages(layout.root) if s.metrics is not None]
    print(metrics_table({s.label: s.metrics for s in stages}))
    print(f"\nreport: {path}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from esevo_ray.evaluation.judge import judge_file
    from esevo_ray.evaluation.judge_scores import summarize

    if args.samples is not None:
        args.overrides = [*(args.overrides or []), f"eval.judge_samples={args.samples}"]
    if args.endpoint or args.model:  # the judge they name, even where the config's is local
        args.overrides = [*(args.overrides or []), "eval.judge.backend=endpoint"]
    cfg = load_args_config(args)
    responses = existing(args.responses, "--responses", "responses Parquet")
    if responses.is_dir():  # an eval folder: read whole, its parts/ would be judged twice
        if not (responses / "responses.parquet").is_file():
            raise UsageError(f"--responses {responses}: a folder without responses.parquet")
        responses = responses / "responses.parquet"
    out = Path(args.out) if args.out else responses.parent / "judge_scores.parquet"
    held = getattr(args, "held", None)  # main()'s: released when the command ends
    if held is not None and (root := run_holding(out.resolve())) is not None:
        held.enter_context(run_lock(root))  # a run's own file: not while evolve runs there
    n_samples = None if cfg.eval.judge_samples <= 0 else cfg.eval.judge_samples
    scores = judge_file(
        responses,
        out,
        cfg.eval.judge,
        n_samples=n_samples,
        base_url=args.endpoint,
        model=args.model,
        local_model=cfg.model.path,
        dtype=cfg.model.dtype,
    )
    summary = summarize(scores)
    print(json.dumps({"out": str(out), "verdicts": scores.num_rows, "summary": summary}, indent=2))
    missing = scores.column("score").null_count
    if scores.num_rows and missing == scores.num_rows:
        print("esevo: error: every verdict is missing; see the error column", file=sys.stderr)
        return 1
    return 0


def _contexts(args: argparse.Namespace, layout) -> Path:
    return stage_input(
        args, args.contexts, layout.eval_contexts, "--contexts", "evaluation contexts",
        "data prepare",
    )  # fmt: skip


def _local_eval(layout, name: str | None, model: Path, adapter: str | None) -> tuple[str, Path]:
    """The label and folder of a local model's evaluation. `m<t>/eval` holds this run's M^t
    only: another run's `m1/adapter` is `<its run>-m1`, in `eval/`, so the loop's M1 (and
    the report) never take its responses.
    """
    from esevo_ray.evaluation.evaluate import default_name
    from esevo_ray.layout import model_index

    label = name or default_name(model, adapter)
    t = model_index(label)
    if t is None:
        return label, layout.eval(label)
    own = layout.adapter(t)
    if (adapter is None and _is_runs_base(layout, t, model)) or (
        adapter is not None and Path(adapter).resolve() == own.resolve()
    ):
        return label, layout.eval(t)
    if name is not None:
        raise UsageError(
            f"--name {name}: that is this run's M{t} (at {own}), and the model evaluated is "
            "another one; give it another name"
        )
    # <run>/m<t>/adapter, a model folder <run>/.../m<t> (merged), or an adapter named m<t>
    folder = Path(adapter if adapter is not None else model).resolve()
    run = folder.parent.parent if folder.name == "adapter" else folder.parent
    label = f"{run.name}-{label}"
    return label, layout.eval(label)


def _is_runs_base(layout, t: int, model: Path) -> bool:
    """Whether `model` is the base model the run's M^t is (evolve.init: base): the one its
    marker names, not any folder named m<t>."""
    if not layout.is_base(t):
        return False
    try:
        recorded = json.loads(layout.base_marker(t).read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return Path(recorded).resolve() == Path(model).resolve()


def cmd_eval(args: argparse.Namespace) -> int:
    from esevo_ray.evaluation.endpoint import is_endpoint
    from esevo_ray.evaluation.evaluate import evaluate_model
    from esevo_ray.models import resolve_model

    cfg, layout = run_of(args, writes=True)
    contexts = _contexts(args, layout)
    model = args.model if args.model and is_endpoint(args.model) else None
    if model is None:  # with an endpoint, evaluate_model says why --adapter does not apply
        adapter_arg(args.adapter)
        given = [flag for flag, value in (
            ("--served-model", args.served_model), ("--tokenizer", args.tokenizer),
            ("--no-sampling-extras", args.no_sampling_extras),
        ) if value]  # fmt: skip
        if given:  # --model forgotten: the local base model would be evaluated instead
            raise UsageError(
                f"{', '.join(given)}: for an endpoint, and --model is no http(s) URL "
                f"({args.model or 'none given: the config model'})"
            )
    model = model or resolve_model(args.model or cfg.model.path)
    if is_endpoint(model):
        name = args.name or args.served_model
        if not name:
            raise UsageError(
                f"--model {model} is an endpoint: name the model it serves with --served-model "
                "(or this evaluation with --name)"
            )
        out = layout.served_eval(name)
    else:
        name, out = _local_eval(layout, args.name, model, args.adapter)
    manifest = evaluate_model(
        cfg, model, contexts, Path(args.out or out),
        name=name, adapter=args.adapter, served_model=args.served_model,
        api_key_env=args.api_key_env, concurrency=args.concurrency, tokenizer=args.tokenizer,
        sampling_extras=not args.no_sampling_extras, bertscore=not args.no_bertscore,
    )  # fmt: skip
    print(json.dumps(manifest, indent=2))
    return 0


def cmd_ablate_prompts(args: argparse.Namespace) -> int:
    from esevo_ray.evaluation.ablation import ablate_prompts
    from esevo_ray.models import resolve_model

    cfg, layout = run_of(args, writes=True)
    out = Path(args.out) if args.out else layout.ablation("prompts")
    ablate_prompts(
        cfg, _contexts(args, layout), out, model_path=resolve_model(args.model or cfg.model.path),
        names=tuple(args.prompts.split(",")), bertscore=args.bertscore,
    )  # fmt: skip
    print((out / "table.md").read_text())
    return 0


def cmd_ablate_pairs(args: argparse.Namespace) -> int:
    from esevo_ray.evaluation.ablation import human_reference_pairs

    pairs = existing(args.pairs, "--pairs", "pairs folder or file")
    manifest = human_reference_pairs(pairs, args.out)
    print(json.dumps({"out": args.out, **manifest}, indent=2))
    return 0


def cmd_ablate_table(args: argparse.Namespace) -> int:
    from esevo_ray.evaluation.ablation import ablation_table
    from esevo_ray.evaluation.tables import METRIC_COLUMNS, read_metrics
    from esevo_ray.io import atomic_write_text, check_report_file

    metrics = {}
    for item in args.evals:
        label, sep, folder = item.partition("=")
        path = Path(folder) / "metrics.json"
        if not sep or not path.exists():
            raise FileNotFoundError(f"{item!r}: want LABEL=EVAL_DIR with a metrics.json ({path})")
        if not label or label in metrics:
            raise UsageError(f"{item!r}: each row needs a label of its own, before the '='")
        metrics[label] = read_metrics(path)
    columns = tuple(args.columns.split(","))
    unknown = [c for c in columns if c not in METRIC_COLUMNS]
    if unknown:
        raise UsageError(f"--columns: unknown {unknown}; choose from {', '.join(METRIC_COLUMNS)}")
    # An earlier table of this command starts with its header row.
    check_report_file(
        args.out, file="Markdown file to write", earlier=lambda text: text.startswith("| Model |")
    )
    table = ablation_table(metrics, columns, relative=args.relative)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    print(table)
    return 0


def cmd_ablate_pairs_table(args: argparse.Namespace) -> int:
    from esevo_ray.pipeline.experiments import pairs_table

    summary = pairs_table(loop_config(args))
    print(Path(summary["table"]).read_text())
    print("runs: " + ", ".join(f"{arm} {root}" for arm, root in summary["runs"].items()))
    print(f"table: {summary['table']}")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from esevo_ray.pipeline.experiments import baselines

    summary = baselines(loop_config(args))
    print(Path(summary["table"]).read_text())
    print(f"table: {summary['table']}")
    return 0


def cmd_bench_llm(args: argparse.Namespace) -> int:
    from esevo_ray.evaluation.llm_bench import default_tasks, run_lm_eval

    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else default_tasks(args.api)
    # A model's own folder: vLLM names a served model by its path or org/name.
    out = args.out or str(Path("bench") / "llm" / label_folder(args.served_model))
    result = run_lm_eval(
        args.endpoint, tasks, out,
        served_model=args.served_model, api=args.api, tokenizer=args.tokenizer,
        limit=args.limit, num_fewshot=args.num_fewshot, concurrency=args.concurrency,
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `eval`, `report`, `judge` and `ablate` to the `esevo` subparsers."""

    p = sub.add_parser("eval", help="responses + metrics of one model on the ESConv eval split")
    add_config_args(p)
    p.add_argument("--model", help="local model folder or http(s) endpoint (default: model.path)")
    p.add_argument("--adapter", help="LoRA adapter folder for a local model")
    p.add_argument("--name", help="model label (default: adapter folder, or --served-model)")
    p.add_argument(
        "--out", help="output folder (default: <run>/m<t>/eval for m<t>, else <run>/eval/<name>)"
    )
    p.add_argument(
        "--contexts", help="contexts Parquet (default: <run>/data/eval_contexts.parquet)"
    )
    p.add_argument("--served-model", help="model name at the endpoint")
    p.add_argument("--api-key-env", default="ESEVO_EVAL_API_KEY", help="env var with its key")
    p.add_argument("--concurrency", type=positive, default=4, help="endpoint requests in flight")
    p.add_argument("--tokenizer", help="local tokenizer folder to cut contexts for an endpoint")
    p.add_argument(
        "--no-sampling-extras", action="store_true", help="do not send top_k/repetition_penalty"
    )
    p.add_argument("--no-bertscore", action="store_true", help="skip BERTScore")
    p.set_defaults(func=cmd_eval)

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
    p.add_argument(
        "--endpoint",
        help="OpenAI-compatible base URL, e.g. http://host:8000/v1 (judges there, whatever "
        "eval.judge.backend says)",
    )
    p.add_argument("--model", help="judge model name at the endpoint")
    p.add_argument("--out", help="output parquet (default: judge_scores.parquet beside input)")
    p.add_argument(
        "--samples", type=int, help="contexts to sample (default eval.judge_samples; 0 = all)"
    )
    p.add_argument("--config", help="YAML run config for eval.judge settings")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser(
        "baselines", help="Table 2: Vanilla, SFT-ESConv and M0..MT of the run, one table"
    )
    add_config_args(p)
    add_new_run_arg(p)
    p.set_defaults(func=cmd_baselines)

    _add_ablate_parsers(sub)


def _add_ablate_parsers(sub: argparse._SubParsersAction) -> None:
    from esevo_ray.evaluation.ablation import PROMPTS, TABLE5_COLUMNS

    ablate = command_group(sub, "ablate", "prompt and preference-pair ablations")
    p = ablate.add_parser("prompts", help="Table 3: the base model under each system prompt")
    add_config_args(p)
    p.add_argument("--model", help="model folder (default: model.path)")
    p.add_argument(
        "--contexts", help="contexts Parquet (default: <run>/data/eval_contexts.parquet)"
    )
    p.add_argument("--out", help="output folder (default: <run>/ablation/prompts)")
    p.add_argument("--prompts", default=",".join(PROMPTS), help=f"subset of {list(PROMPTS)}")
    p.add_argument("--bertscore", action="store_true", help="also compute BERTScore")
    p.set_defaults(func=cmd_ablate_prompts)

    p = ablate.add_parser("pairs", help="Table 5: {human reference, policy} pairs from {SR, P}")
    p.add_argument("--pairs", required=True, help="self-refined pairs (PAIRS folder or file)")
    p.add_argument("--out", required=True, help="output folder for the {HM, P} pairs")
    p.set_defaults(func=cmd_ablate_pairs)

    p = ablate.add_parser("table", help="Markdown table of several eval folders")
    p.add_argument("evals", nargs="+", help="LABEL=EVAL_DIR (a folder with metrics.json)")
    p.add_argument("--columns", default=",".join(TABLE5_COLUMNS), help="metric keys")
    p.add_argument(
        "--relative",
        action="store_true",
        help="add %% change from the first row (Table 5's is from the row before)",
    )
    p.add_argument("--out", help="also write the table to this file")
    p.set_defaults(func=cmd_ablate_table)

    p = ablate.add_parser(
        "pairs-table",
        help="Table 5: the {HM,P}, {HL,P} (with Syn-ESC seeds) and {SR,P} arms from the base "
        "model, run and tabled",
    )
    add_config_args(p)
    add_new_run_arg(p)
    p.set_defaults(func=cmd_ablate_pairs_table)


def add_bench_parsers(bench: argparse._SubParsersAction) -> None:
    """Add `llm` (lm-evaluation-harness, Table 4) to the `esevo bench` subcommands."""
    from esevo_ray.evaluation.llm_bench import PAPER_TASKS

    p = bench.add_parser("llm", help="lm-evaluation-harness tasks against a served model")
    p.add_argument("--endpoint", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--tasks",
        help=f"comma-separated lm-eval tasks (default: of {','.join(PAPER_TASKS)}, those --api "
        "can run: the multiple-choice ones need completions)",
    )
    p.add_argument("--served-model", default="current", help="model name at the endpoint")
    p.add_argument("--api", choices=["chat", "completions"], default="chat")
    p.add_argument("--tokenizer", help="tokenizer for --api completions")
    p.add_argument("--limit", type=float, help="examples per task (a fraction if < 1)")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--concurrency", type=positive, default=4)
    p.add_argument(
        "--out", help="folder for results.json and table.md (default: bench/llm/<served model>)"
    )
    p.set_defaults(func=cmd_bench_llm)
