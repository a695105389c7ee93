"""Ablations of Section 5: the system prompt (Table 3) and the chosen side of pairs (Table 5).

Prompt ablation: the same model answers the evaluation contexts under the vanilla,
strategy-guideline (P_task) and self-reflection prompts, with the same decoding and seeds.
The self-reflection answer is a JSON object {"strategy", "text"}; its "text" is scored, and
the raw answer where no object with a non-empty "text" can be read (counted as fallbacks).

Pair ablation: {HM, P} pairs are the {SR, P} pairs of the same contexts with the chosen
response replaced by the human reference (the golden ESConv response), so both sets differ
only in the chosen side and train with `esevo dpo` alike. `pairs_table` and `interval_table`
lay out Table 5 (the loop's arms are run by `esevo_ray.pipeline.experiments`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from esevo_ray import prompts, schema
from esevo_ray.config import RunConfig
from esevo_ray.errors import UsageError
from esevo_ray.evaluation import bootstrap
from esevo_ray.evaluation.backbones import resolve_backbone
from esevo_ray.evaluation.metrics import score_responses
from esevo_ray.evaluation.tables import METRIC_COLUMNS, markdown_table, scores_of
from esevo_ray.generation.parsing import ParseError, extract_object
from esevo_ray.io import atomic_dir, atomic_write_text, check_replaceable, write_parquet
from esevo_ray.parts import unfinished
from esevo_ray.schema import HUMAN_REFERENCE

logger = logging.getLogger(__name__)

# name -> (row label of Table 3, system prompt)
PROMPTS = {
    "vanilla": ("Vanilla", prompts.VANILLA_PROMPT),
    "strategy": ("w/ strategy guidelines", prompts.TASK_PROMPT),
    "self_reflection": ("w/ self-reflection", prompts.SELF_REFLECTION_PROMPT),
}
TABLE3_COLUMNS = ("bleu_2", "bleu_3", "rouge_l", "distinct_3")
TABLE5_COLUMNS = ("bleu_2", "bleu_3", "rouge_l", "distinct_2")
TABLE5_LABELS = {"bleu_2": "B-2", "bleu_3": "B-3", "rouge_l": "R-L", "distinct_2": "D-2"}


def reflection_text(answer: str) -> str | None:
    """The "text" of a self-reflection answer, or None when there is no such field."""
    try:
        obj = extract_object(answer, lambda o: any(str(k).strip().lower() == "text" for k in o))
    except ParseError:
        return None
    text = {str(k).strip().lower(): v for k, v in obj.items()}.get("text")
    return text.strip() if isinstance(text, str) and text.strip() else None


def extract_reflection_texts(raw: pa.Table) -> tuple[pa.Table, int]:
    """EVAL_RESPONSES with each answer replaced by its "text"; and the number of fallbacks."""
    answers = [a or "" for a in raw.column("response").to_pylist()]
    texts = [reflection_text(a) for a in answers]
    fallbacks = sum(t is None for t in texts)
    column = pa.array([a if t is None else t for a, t in zip(answers, texts, strict=True)])
    table = raw.set_column(raw.schema.get_field_index("response"), "response", column)
    return schema.conform(table, schema.EVAL_RESPONSES), fallbacks


def ablation_table(
    scores: dict[str, dict], columns: tuple[str, ...], *, relative: bool = False
) -> str:
    """Models as rows, the chosen metrics x100; with `relative`, the % change from the first row.

    Args:
        scores: row label -> metrics.json content (or its "scores" dict).
    """
    rows, first = [], None
    for label, metrics in scores.items():
        values = scores_of(metrics)
        cells = []
        for key in columns:
            value = values.get(key)
            cell = "–" if value is None else f"{value:.2f}"
            base = (first or {}).get(key)
            if relative and first is not None and value is not None and base:
                cell += f" ({100 * (value - base) / base:+.2f}%)"
            cells.append(cell)
        rows.append([label, *cells])
        first = values if first is None else first
    return markdown_table(["Model", *(METRIC_COLUMNS[c] for c in columns)], rows)


def _value_and_change(value: float | None, previous: float | None) -> list[str]:
    if value is None:
        return ["–", "–"]
    change = f"{100 * (value - previous) / previous:+.2f}%" if previous else "–"
    return [f"{value:.2f}", change]


def pairs_table(
    m0: dict | None, arms: dict[str, dict[str, dict | None]], columns=TABLE5_COLUMNS
) -> str:
    """Table 5 layout: M0, then per arm a title row and its models, each metric x100 followed by
    its % change from the row before (M1 from M0, M2 from M1).

    Args:
        m0: metrics.json of M0 (or its "scores" dict).
        arms: arm title ("{HM,P}") -> model label -> metrics.json of that model.
    """
    header = ["Model"]
    for key in columns:
        header += [TABLE5_LABELS.get(key, METRIC_COLUMNS.get(key, key)), "%"]
    base = scores_of(m0)
    rows = [["M0", *(c for k in columns for c in _value_and_change(base.get(k), None))]]
    for arm, models in arms.items():
        rows.append([f"**{arm}**", *[""] * (2 * len(columns))])
        previous = base
        for label, metrics in models.items():
            values = scores_of(metrics)
            cells = [_value_and_change(values.get(k), previous.get(k)) for k in columns]
            rows.append([label, *(c for pair in cells for c in pair)])
            previous = values
    return markdown_table(header, rows)


def interval_table(comparisons: list[dict], columns: dict[str, str]) -> str:
    """One row per comparison: the difference (model - base, points x100) of each metric with
    its bootstrap interval, `*` when the interval excludes 0, and n, the contexts it rests on.

    Args:
        comparisons: {"label", "metrics", "not_compared"} (`intervals.comparison`) in row
            order.
        columns: metric key -> column title.
    """
    rows = []
    for comparison in comparisons:
        metrics, apart = comparison["metrics"], comparison.get("not_compared", {})
        cells = []
        for key in columns:
            r = metrics.get(key)
            cells.append(bootstrap.difference_text(r) if r else "not compared" if key in apart
                         else "–")  # fmt: skip
        n = next((r["n"] for k, r in metrics.items() if k in columns), "–")
        rows.append([comparison["label"], *cells, str(n)])
    return markdown_table(["Comparison", *columns.values(), "n"], rows)


def ablate_prompts(
    cfg: RunConfig,
    contexts: str | Path,
    out: str | Path,
    *,
    model_path: str | Path,
    names: tuple[str, ...] = tuple(PROMPTS),
    bertscore: bool = False,
) -> dict:
    """Table 3: responses and metrics of `model_path` under each prompt, and `out/table.md`.

    Each prompt gets `out/<name>/{responses.parquet, metrics.json}`; the self-reflection raw
    answers stay in `out/self_reflection/raw/`. A rerun resumes finished batches.

    Returns:
        The summary written to `out/summary.json`: per prompt the scores, rows and fallbacks.
    """
    from esevo_ray.evaluation.responses import generate_responses

    unknown = [n for n in names if n not in PROMPTS]
    if unknown:
        raise UsageError(f"--prompts: unknown {unknown}; choose from {', '.join(PROMPTS)}")
    if bertscore:  # its settings checked before the responses, not after them
        resolve_backbone(cfg.eval.bertscore_model, cfg.eval.bertscore_num_layers)
    out = Path(out)
    # Its table.md and summary.json are replaced: only in an earlier ablation's folder.
    check_replaceable(out, holds=("summary.json", *PROMPTS), what="prompt ablation")
    summary: dict = {"model": str(model_path), "config_digest": cfg.digest(), "prompts": {}}
    metrics: dict[str, dict] = {}
    for name in names:
        label, system = PROMPTS[name]
        folder = out / name
        raw_dir = folder / "raw" if name == "self_reflection" else folder
        responses = generate_responses(
            cfg, contexts, raw_dir, model_path=model_path, model_name=name, system_prompt=system
        )
        fallbacks = None
        if name == "self_reflection":
            table, fallbacks = extract_reflection_texts(
                schema.read_table(responses, schema.EVAL_RESPONSES)
            )
            responses = write_parquet(table, folder / "responses.parquet")
            logger.info(
                "self-reflection: %d of %d answers had no JSON text", fallbacks, table.num_rows
            )
        metrics[label] = score_responses(responses, folder, cfg, bertscore=bertscore)
        summary["prompts"][name] = {
            "label": label,
            "rows": metrics[label]["settings"]["n"],
            "fallbacks": fallbacks,
            "scores": metrics[label]["scores"],
        }
    lines = ["# Prompt ablation (Table 3 layout)", "", ablation_table(metrics, TABLE3_COLUMNS), ""]
    if "self_reflection" in names:
        s = summary["prompts"]["self_reflection"]
        lines.append(
            f"Self-reflection: {s['fallbacks']} of {s['rows']} answers held no JSON object with a "
            '"text" field and were scored as the raw answer.'
        )
    lines.append(f"Model: {model_path}. Scores x100 on {contexts}.")
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def human_reference_pairs(pairs: str | Path, out: str | Path) -> dict:
    """Table 5: derive {HM, P} pairs from {SR, P} pairs into `out/pairs.parquet` (atomically).

    Chosen := the golden response (chosen_source "human_reference"); prompt, rejected, keys and
    lineage columns are kept. Rows with an empty golden response are dropped and counted.

    Only first-iteration pairs seeded from ESConv qualify: ExTES's and ServeForEmo's golden
    responses are GPT-4's ({HL, P}), and a later iteration's rejected responses come from the
    {SR, P} arm's own model (`esevo ablate pairs-table` runs each arm as its own loop).

    Returns:
        The manifest written to `out/manifest.json`.
    Raises:
        UsageError: `out` is the source folder or lies inside it (or the reverse), or is
            something other than an earlier {HM, P} pairs folder (`io.check_replaceable`);
            the source folder is unfinished (no manifest.json) or holds pairs of another
            source or iteration.
    """
    src, out = Path(pairs).resolve(), Path(out).resolve()
    if out == src or src in out.parents or out in src.parents:
        raise UsageError(f"--out {out} must not be, contain or lie inside the source pairs {src}")
    if unfinished(src):
        raise UsageError(f"{src}: unfinished pairs (no manifest.json); finish generating them")
    check_replaceable(out, holds="pairs.parquet", what="{HM, P} pairs")
    table = schema.read_table(src, schema.PAIRS)
    for column, allowed, why in (
        ("source", {"esconv"}, "only ESConv's golden responses are human-written"),
        ("iteration", {1}, "a later iteration's rejected responses are the {SR, P} arm's"),
    ):
        if other := sorted(set(table.column(column).to_pylist()) - allowed):
            raise UsageError(
                f"{src}: pairs with {column} {other}; {why}: {{HM, P}} pairs come from "
                "first-iteration pairs of ESConv seeds (`esevo ablate pairs-table` runs the arms)"
            )
    golden = pc.fill_null(table.column("golden"), "")
    keep = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(golden)), 0)
    kept = table.filter(keep)
    was_golden = [
        c[-1]["content"] == g
        for c, g in zip(
            kept.column("chosen").to_pylist(), kept.column("golden").to_pylist(), strict=True
        )
    ]
    chosen = [[{"role": "assistant", "content": g}] for g in kept.column("golden").to_pylist()]
    kept = kept.set_column(
        kept.schema.get_field_index("chosen"), "chosen", pa.array(chosen, type=schema.MESSAGES)
    )
    kept = kept.set_column(
        kept.schema.get_field_index("chosen_source"),
        "chosen_source",
        pa.array([HUMAN_REFERENCE] * kept.num_rows, pa.string()),
    )
    sources = table.column("chosen_source").value_counts().to_pylist()
    manifest = {
        "source_pairs": str(src),
        "rows": kept.num_rows,
        "dropped_empty_golden": table.num_rows - kept.num_rows,
        "chosen_already_golden": sum(was_golden),
        "source_chosen_source": {s["values"]: s["counts"] for s in sources},
        "chosen_source": HUMAN_REFERENCE,
    }
    with atomic_dir(out) as tmp:
        write_parquet(schema.conform(kept, schema.PAIRS, where=str(out)), tmp / "pairs.parquet")
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
    logger.info("wrote %d {HM, P} pairs to %s", kept.num_rows, out)
    return manifest
