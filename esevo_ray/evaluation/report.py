"""The Markdown evaluation report of a run directory, with tables laid out like Tables 2 and 7.

Reads each model's eval folder and pairs through `RunLayout`; missing parts are skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa

from esevo_ray.evaluation import analysis, intervals, plots
from esevo_ray.evaluation.report_sections import pairs_sections, response_sections
from esevo_ray.evaluation.tables import (
    METRIC_COLUMNS,
    JudgeMeans,
    judge_means,
    judge_table,
    metrics_table,
    read_metrics,
    scores_of,
)
from esevo_ray.io import atomic_dir, atomic_write_text
from esevo_ray.layout import RunLayout, read_manifest
from esevo_ray.parts import unfinished
from esevo_ray.schema import EVAL_RESPONSES, JUDGE_SCORES, PAIRS, read_table

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """One model of the run: M0 (the SFT model) or M<k> after iteration k."""

    label: str
    index: int
    run: RunLayout

    @property
    def eval_dir(self) -> Path:
        return self.run.eval(self.index)

    @cached_property
    def metrics(self) -> dict | None:
        return read_metrics(self.eval_dir / "metrics.json")

    @cached_property
    def responses(self) -> pa.Table | None:
        path = self.eval_dir / "responses.parquet"
        return read_table(path, EVAL_RESPONSES) if path.exists() else None

    @cached_property
    def judge_settings(self) -> dict:
        """The settings the verdicts on this model were made under ({} without a file)."""
        from esevo_ray.evaluation.judge import judged_under

        return judged_under(self.run.judge_scores(self.index))

    @cached_property
    def judging_unfinished(self) -> bool:
        """Whether the verdicts on this model are those of a judging that stopped part-way."""
        from esevo_ray.evaluation.judge import is_partial

        return is_partial(self.run.judge_scores(self.index))

    @cached_property
    def judged_responses_changed(self) -> int:
        """How many responses the verdicts on this model judged have changed since (the model
        evaluated again, and not judged again); 0 without verdicts or responses."""
        from esevo_ray.evaluation.judge import changed_since_judged

        path = self.run.judge_scores(self.index)
        if self.responses is None or not path.exists():
            return 0
        return changed_since_judged(path, self.responses)

    @cached_property
    def judge(self) -> pa.Table | None:
        """The verdicts on this model; None when there are none, or only those of a judging
        that stopped part-way (means over them would pass for the whole sample's), or when
        they judged responses that have changed since (they would score replies the model
        no longer gives, beside metrics of the ones it does)."""
        path = self.run.judge_scores(self.index)
        if self.judging_unfinished:
            logger.warning(
                "%s: the judging of %s stopped part-way; its verdicts are left out of the report "
                "until it is run again to the end", path, self.label,
            )  # fmt: skip
            return None
        if changed := self.judged_responses_changed:
            logger.warning(
                "%s: %d of the responses of %s it judged have changed since; its verdicts are "
                "left out of the report until they are judged again", path, changed, self.label,
            )  # fmt: skip
            return None
        return read_table(path, JUDGE_SCORES) if path.exists() else None

    @property
    def pairs_unfinished(self) -> bool:
        """Whether this iteration's pairs folder is still being written (no manifest.json
        yet): its parts are the first batches only."""
        return self.index > 0 and unfinished(self.run.pairs(self.index))

    @cached_property
    def pairs(self) -> pa.Table | None:
        """This iteration's preference pairs; None when there are none, or when they are
        still being generated."""
        if self.index > 0 and self.run.pairs(self.index).exists() and not self.pairs_unfinished:
            return read_table(self.run.pairs(self.index), PAIRS)
        return None


def find_stages(run_dir: str | Path) -> list[Stage]:
    """Every m<k> folder of a run, in iteration order."""
    run = RunLayout(Path(run_dir))
    if not run.root.is_dir():
        raise FileNotFoundError(f"run directory not found: {run.root}")
    return [Stage(f"M{t}", t, run) for t in run.model_indices()]


def write_report(run_dir: str | Path, *, relevance: analysis.Method = "embedding") -> Path:
    """Write <run_dir>/report/report.md and its PNG figures; return the report's path.

    Raises:
        FileNotFoundError: the run directory does not exist or holds no evaluated model.
    """
    run_dir = Path(run_dir)
    stages = [s for s in find_stages(run_dir) if s.eval_dir.is_dir() or s.pairs is not None]
    evaluated = [s for s in stages if s.metrics is not None or s.responses is not None]
    if not evaluated:
        raise FileNotFoundError(f"{run_dir}: no m<t>/eval folder with results")
    run = RunLayout(run_dir)
    with atomic_dir(run.report_dir) as out:
        text = _render(run_dir, stages, evaluated, out, relevance)
        atomic_write_text(out / run.report.name, text)
    logger.info("report written to %s", run.report)
    return run.report


def _other_contexts(run_dir: Path, evaluated: list[Stage]) -> dict[str, str]:
    """The models whose evaluation (its manifest.json) read other contexts than a run's
    evaluation contexts (by their place in a run: the run may have moved since)."""
    own = RunLayout(run_dir).eval_contexts
    out = {}
    for s in evaluated:
        try:
            used = json.loads((s.eval_dir / "manifest.json").read_text())["contexts"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if Path(used).parts[-2:] != own.parts[-2:]:
            out[s.label] = used
    return out


def _render(
    run_dir: Path,
    stages: list[Stage],
    evaluated: list[Stage],
    out: Path,
    relevance: analysis.Method,
) -> str:
    md = [
        f"# Evaluation report: {run_dir.name}",
        "",
        "## Automatic metrics (Table 2 layout)",
        "",
        metrics_table({s.label: s.metrics for s in evaluated}),
        "",
        "Scores x100. In brackets: change from the previous model, in points. "
        "BERTScore uses the backbone named in its column and is not comparable with "
        "roberta-large BERTScores. Distinct-n is the paper's definition (distinct n-grams / "
        "n-grams of each response, averaged over the responses that hold one) and Corpus "
        "Distinct-n counts over all responses at once; `n` is the number of contexts a row "
        "rests on, and the dialogues they come from (with any empty responses among them, "
        "which score 0 on the similarity metrics).",
        "",
    ]
    if elsewhere := _other_contexts(run_dir, evaluated):  # `esevo eval --contexts` into m<t>
        md += [
            "Evaluated on other contexts than the run's evaluation contexts, so not comparable "
            f"with the other rows: {'; '.join(f'{k} ({v})' for k, v in elsewhere.items())}.",
            "",
        ]
    scores = {s.label: scores_of(s.metrics) for s in evaluated}
    figure = plots.grouped_bars(
        scores,
        list(METRIC_COLUMNS),
        out / "metrics.png",
        title="Automatic metrics",
        ylabel="score x100",
        group_labels=list(METRIC_COLUMNS.values()),
    )
    md += [f"![automatic metrics]({figure})", ""]

    judged = {s.label: t for s in evaluated if (t := s.judge) is not None}
    unfinished = [s.label for s in evaluated if s.judging_unfinished]
    changed = [
        s.label for s in evaluated if not s.judging_unfinished and s.judged_responses_changed
    ]
    if judged or unfinished or changed:
        md += ["## LLM-as-a-judge (Table 7 layout)", ""]
        table7 = judge_means(judged) if judged else None  # the table's and the p row's
        if judged:
            settings = {s.label: s.judge_settings for s in evaluated if s.label in judged}
            md += [
                judge_table(judged, settings, table7),
                "",
                "Mean score on a 1-5 scale over the contexts every model has a verdict for on "
                "that dimension (`n` of them), so each change compares the same contexts; "
                "`missing` counts each file's verdicts that stayed unparseable or failed.",
                "",
            ]
        if unfinished:
            md += [
                f"Left out: {', '.join(unfinished)}, whose judging stopped part-way (run it "
                "again to the end: `esevo evolve`, or `esevo judge`).",
                "",
            ]
        if changed:
            md += [
                f"Left out: {', '.join(changed)}, whose responses changed since they were "
                "judged (judge them again: `esevo evolve`, or `esevo judge`).",
                "",
            ]
        if judged:
            md += _human_agreement(run_dir, table7)

    md += intervals.report_sections(evaluated, out)
    responses = {s.label: t for s in evaluated if (t := s.responses) is not None}
    if responses:
        md += response_sections(responses, out, relevance)
    pairs = {f"iteration {s.index}": t for s in stages if (t := s.pairs) is not None}
    if pairs:
        md += pairs_sections(pairs, out, relevance)
    if unfinished := [str(s.index) for s in stages if s.pairs_unfinished]:
        md += [
            "",
            f"Pairs left out: iteration {', '.join(unfinished)}, whose generation has not "
            "finished (no manifest.json in its pairs folder).",
        ]
    return "\n".join(md)


# Fewer models give a correlation of per-model means that says nothing: two points always
# lie on a line (r = +-1).
MIN_MODELS_FOR_AGREEMENT = 3


def _human_agreement(run_dir: Path, table7: JudgeMeans) -> list[str]:
    """Table 7's p row: per dimension, Pearson r of Table 7's judge means (`judge_means`) and
    the human point-wise means across models, when the run has a human-evaluation database
    with ratings."""
    from esevo_ray.config import JUDGE_DIMENSIONS
    from esevo_ray.evaluation.judge_scores import pearson_by_dimension
    from esevo_ray.human_eval.report import load_rows

    db = _human_db(run_dir)
    if not db.exists():
        return []
    ratings, _ = load_rows(db)
    if not ratings:
        return []
    human = pa.Table.from_pylist(
        [
            {"model": r["model"], "dimension": r["dimension"], "score": float(r["score"])}
            for r in ratings
        ]
    )
    # The means Table 7 shows, over the contexts every model has a verdict for.
    judge = pa.Table.from_pylist(
        [
            {"model": table7.models[label], "dimension": dimension, "score": mean}
            for label, by_dimension in table7.means.items()
            for dimension, mean in by_dimension.items()
        ],
        schema=pa.schema(
            [("model", pa.string()), ("dimension", pa.string()), ("score", pa.float64())]
        ),
    )
    both = sorted(set(judge["model"].to_pylist()) & set(human["model"].to_pylist()))
    rho = pearson_by_dimension(judge, human, on=("model",), min_points=MIN_MODELS_FOR_AGREEMENT)
    cells = [f"{100 * r:.2f}%" if (r := rho.get(d)) is not None else "–" for d in JUDGE_DIMENSIONS]
    sessions = len({r["session_id"] for r in ratings})
    where = db.relative_to(run_dir) if db.is_relative_to(run_dir) else db
    return [
        "Agreement with human point-wise ratings (Pearson r of the judge means above and "
        "the human per-model means, over "
        f"{len(both)} models rated by both, {sessions} rated sessions in `{where}`; – where "
        f"fewer than {MIN_MODELS_FOR_AGREEMENT} models have both):",
        "",
        "| | " + " | ".join(d.capitalize() for d in JUDGE_DIMENSIONS) + " |",
        "|---|" + "---|" * len(JUDGE_DIMENSIONS),
        "| p | " + " | ".join(cells) + " |",
        "",
    ]


def _human_db(run_dir: Path) -> Path:
    """The run's human-evaluation database, by serve.human_eval.db_path of the config the run
    recorded (where the app wrote it)."""
    run = RunLayout(run_dir)
    config = read_manifest(run.manifest).get("config", {}) if run.manifest.exists() else {}
    return run.human_db_at(config.get("serve", {}).get("human_eval", {}).get("db_path"))
