"""Experiments made of several runs of the loop from one config: Table 5 and Table 2's baselines.

Each variant is its own run directory, `<name>-<suffix>` beside the config's run, made by
`evolve` with a few keys changed, so it resumes like any run and `esevo report` and `esevo
serve` read it. The combined tables go to `<run>/ablation/{pairs_table,baselines}/`.

Table 5 (`pairs_table`): from the base model (`evolve.init: base`, M0 = the backbone) with
the seeds split per iteration (`evolve.seed_split`), each arm makes M1..MT: {HM, P} on ESConv
seeds, chosen = the human response; {HL, P} on the config's ExTES / ServeForEmo seeds, chosen
= their GPT-4 response (run only where data.seed_sources has them); {SR, P} on the config's
seeds, chosen = the self-refined response.

Table 2's baselines (`baselines`): Vanilla (the base model, no training), SFT-ESConv (SFT on
ESConv alone, `data.alpaca_samples: 0`), then M0..MT of the config's run.

The untrained backbone (Vanilla, and Table 5's M0) answers under the paper's "Prompt for
vanilla" (`eval.base_prompt: vanilla`), as the paper scored those rows: they repeat Table 3's
plain-prompt row. Every trained model answers under P_task.

Both tables come with paired bootstrap intervals (`evaluation.bootstrap`) of every
comparison they make, over the evaluation contexts both models share.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

from esevo_ray.config import RunConfig
from esevo_ray.data.prepare import check_seed_sources
from esevo_ray.errors import UsageError
from esevo_ray.evaluation import ablation, bootstrap, intervals
from esevo_ray.evaluation.report import Stage
from esevo_ray.evaluation.tables import METRIC_COLUMNS, metrics_table, scores_of
from esevo_ray.io import atomic_write_text
from esevo_ray.layout import RunLayout
from esevo_ray.pipeline.evolve import evolve
from esevo_ray.pipeline.manifest import NEW_RUN, recorded

logger = logging.getLogger(__name__)

# The sources of Syn-ESC, whose golden responses GPT-4 wrote: the {HL, P} arm's seeds.
SYNTHETIC_SOURCES = ("extes", "serveforemo")
HL_NOTE = (
    "{HL,P} is not run: its seeds and chosen responses are Syn-ESC's (ExTES / ServeForEmo, "
    "GPT-4 written), and data.seed_sources has neither."
)
# Table 2's columns (the paper's Distinct-n, per response).
TABLE2_COLUMNS = ("bleu_2", "bleu_3", "rouge_l", "meteor", "bertscore", "distinct_2", "distinct_3")


def variant(cfg: RunConfig, suffix: str, **sections: dict) -> RunConfig:
    """`cfg` as the run `<name>-<suffix>`, with keys of some sections replaced, validated.

    Example: `variant(cfg, "vanilla", evolve={"init": "base", "iterations": 0})`.
    """
    data = cfg.model_dump(mode="json")
    data["name"] = f"{cfg.name}-{suffix}"
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return RunConfig.model_validate(data)


def arm_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """Arm title -> the run config of that Table 5 arm (Appendix B.1), in the paper's order.

    {HM, P}: seeds from ESConv, chosen = its human responses. {HL, P}: seeds from the
    config's Syn-ESC sources (ExTES / ServeForEmo), chosen = their GPT-4 responses; only when
    data.seed_sources has one. {SR, P}: the config's seeds, chosen = self-refined.
    """
    synthetic = [s for s in cfg.data.seed_sources if s in SYNTHETIC_SOURCES]
    arms = {"{HM,P}": ("hm", "human_reference", ["esconv"])}
    if synthetic:
        arms["{HL,P}"] = ("hl", "human_reference", synthetic)
    arms["{SR,P}"] = ("sr", "self_refined", list(cfg.data.seed_sources))
    return {
        title: variant(
            cfg,
            suffix,
            data={"seed_sources": seeds},
            evolve={"init": "base", "seed_split": True, "chosen": chosen},
            eval={"base_prompt": "vanilla"},  # M0, the backbone, as the paper scored it
        )  # fmt: skip
        for title, (suffix, chosen, seeds) in arms.items()
    }


def baseline_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """Row label -> the run config of that Table 2 baseline."""
    return {
        "Vanilla": variant(cfg, "vanilla", evolve={"init": "base", "iterations": 0},
                           eval={"base_prompt": "vanilla"}),
        "SFT-ESConv": variant(cfg, "sft-esconv", data={"alpaca_samples": 0},
                              evolve={"init": "sft", "iterations": 0}),
    }  # fmt: skip


def check_runs(cfgs: Iterable[RunConfig]) -> None:
    """Refuse at once, before any stage runs, when a variant's run directory was made by
    another config (RunConflict names it and the way out: --new-run), or a variant whose
    data is still to prepare lacks a seed source's file (the arms before it would run for
    hours first)."""
    for c in cfgs:
        root = RunLayout.of(c).root
        run = recorded(root, c, remedy=f"move {root} aside to make it again, {NEW_RUN}", loop=True)
        if run.get("stages", {}).get("data", {}).get("status") != "done":
            try:
                check_seed_sources(c.data)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{c.name}: {e}") from None


def _check_pairs_table(cfg: RunConfig) -> None:
    t, seeds = cfg.evolve.iterations, cfg.data.max_seed_dialogues
    if t < 1:
        raise UsageError(f"evolve.iterations is {t}: Table 5 needs at least one iteration")
    if seeds is not None and seeds < t:
        raise UsageError(
            f"data.max_seed_dialogues is {seeds}: splitting the seeds into evolve.iterations={t} "
            "disjoint parts needs at least one dialogue per iteration"
        )


def _compare(pairs: list[tuple[Stage, Stage]], prefix: str = "") -> list[dict]:
    """Paired bootstrap intervals of model - base for each (base, model)."""
    return [
        {"label": f"{prefix}{b.label} vs {a.label}", "base": a.label, "model": b.label,
         **intervals.comparison(a, b)}
        for a, b in pairs
    ]  # fmt: skip


def pairs_table(cfg: RunConfig) -> dict:
    """Run (or continue) the Table 5 arms of `cfg` and write their table.

    Returns:
        The summary written to `<run>/ablation/pairs_table/summary.json` (runs, scores and the
        bootstrap intervals); the table is `table.md` beside it.
    Raises:
        UsageError: fewer than one iteration, or fewer seed dialogues than iterations.
    """
    _check_pairs_table(cfg)
    arms = arm_configs(cfg)
    check_runs(arms.values())
    runs = {title: evolve(arm) for title, arm in arms.items()}
    models = {
        title: [Stage(f"M{t}", t, run) for t in range(cfg.evolve.iterations + 1)]
        for title, run in runs.items()
    }
    m0 = next(iter(models.values()))[0]
    arms = {title: {s.label: s.metrics for s in stages[1:]} for title, stages in models.items()}
    comparisons = [
        c for title, stages in models.items() for c in _compare(list(pairwise(stages)), f"{title} ")
    ]
    labels = {k: ablation.TABLE5_LABELS[k] for k in ablation.TABLE5_COLUMNS}
    n = (m0.metrics or {}).get("settings", {}).get("n", "–")
    not_run = {} if "{HL,P}" in runs else {"{HL,P}": HL_NOTE}
    md = [
        "# Preference-pair ablation (Table 5 layout)",
        "",
        ablation.pairs_table(m0.metrics, arms),
        "",
        f"Scores x100 on {n} evaluation contexts; % is the change from the row before (M1 from "
        f"M0). M0 is the base model ({m0.run.root.name}/m0, under the paper's vanilla "
        "prompt); every arm starts from it and "
        "trains M^t on its own part of the seed contexts. " + " ".join(not_run.values()),
        "",
        "## Paired bootstrap intervals of each change",
        "",
        ablation.interval_table(comparisons, labels),
        "",
        _interval_note(),
    ]
    summary = {
        "runs": {title: str(run.root) for title, run in runs.items()},
        "scores": {
            title: {s.label: scores_of(s.metrics) for s in stages}
            for title, stages in models.items()
        },
        "comparisons": comparisons,
        "not_run": not_run,
    }
    return _write(RunLayout.of(cfg).ablation("pairs_table"), md, summary)


def baselines(cfg: RunConfig) -> dict:
    """Run (or continue) Table 2's baselines and the config's own run; write one table.

    Returns:
        The summary written to `<run>/ablation/baselines/summary.json`; the table is
        `table.md` beside it.
    """
    others = baseline_configs(cfg)
    check_runs([*others.values(), cfg])  # before hours of work on the first of them
    rows = [Stage(label, 0, evolve(other)) for label, other in others.items()]
    run = evolve(cfg)
    own = [Stage(f"M{t}", t, run) for t in range(cfg.evolve.iterations + 1)]
    # Every model against M0, then each iteration against the one before (M2 vs M1, ...).
    pairs = [(own[0], s) for s in [*rows, *own[1:]]] + list(pairwise(own[1:]))
    comparisons = _compare(pairs)
    labels = {k: METRIC_COLUMNS[k] for k in TABLE2_COLUMNS}
    md = [
        "# Baselines and the self-evolution models (Table 2 layout)",
        "",
        metrics_table({s.label: s.metrics for s in [*rows, *own]}),
        "",
        "Scores x100; in brackets the change from the row above, in points. Vanilla: the base "
        "model under the paper's vanilla prompt (Appendix E.1); SFT-ESConv: SFT on ESConv "
        "alone (no Alpaca replay); M0..M"
        f"{cfg.evolve.iterations}: the run {run.root.name}. SFT-SynESC is not run.",
        "",
        "## Paired bootstrap intervals against M0, and of each iteration",
        "",
        ablation.interval_table(comparisons, labels),
        "",
        _interval_note(),
    ]
    summary = {
        "runs": {s.label: str(s.run.root) for s in [*rows, own[0]]},
        "scores": {s.label: scores_of(s.metrics) for s in [*rows, *own]},
        "comparisons": comparisons,
    }
    return _write(RunLayout.of(cfg).ablation("baselines"), md, summary)


def _interval_note() -> str:
    return (
        "Difference model - base in points on the contexts both models share, with its "
        f"{bootstrap.method_text()}; `*`: the interval excludes 0. Every metric and judge "
        "dimension is in summary.json."
    )


def _write(out: Path, md: list[str], summary: dict) -> dict:
    summary["table"] = str(out / "table.md")
    atomic_write_text(out / "table.md", "\n".join(md) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    logger.info("wrote %s", out / "table.md")
    return summary
