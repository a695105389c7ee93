"""Markdown tables of the report, laid out like the paper's Tables 2 and 7."""

from __future__ import annotations

import pyarrow as pa

from esevo_ray.config import JUDGE_DIMENSIONS
from esevo_ray.evaluation.judge_scores import summarize

METRIC_COLUMNS = {
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "rouge_l": "ROUGE-L",
    "meteor": "METEOR",
    "bertscore": "BERTScore",
    # The paper's Distinct-n (per response, averaged), then the corpus-level one.
    "distinct_2": "Distinct-2",
    "distinct_3": "Distinct-3",
    "corpus_distinct_2": "Corpus Distinct-2",
    "corpus_distinct_3": "Corpus Distinct-3",
}
# The ESConv benchmark toolkit's metric set (esconv_metrics.py), as the ESC literature names it.
ESCONV_COLUMNS = {
    "bleu_1": "B-1",
    "bleu_2": "B-2",
    "bleu_3": "B-3",
    "bleu_4": "B-4",
    "rouge_l": "R-L",
    "distinct_1": "D-1",
    "distinct_2": "D-2",
    "distinct_3": "D-3",
}


def scores_of(metrics: dict | None) -> dict[str, float]:
    if metrics is None:
        return {}
    return metrics.get("scores", metrics)


def cell(value: float | None, previous: float | None) -> str:
    if value is None:
        return "–"
    if previous is None:
        return f"{value:.2f}"
    return f"{value:.2f} ({value - previous:+.2f})"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def delta_rows(values: dict[str, dict[str, float | None]], keys: list[str]) -> list[list[str]]:
    rows, previous = [], None
    for label, row in values.items():
        prev = previous or {}
        rows.append([label, *(cell(row.get(k), prev.get(k)) for k in keys)])
        previous = row
    return rows


def metrics_table(metrics: dict[str, dict | None]) -> str:
    """Table 2 layout: models as rows, metrics x100, (+/-) change from the previous model, and
    `n`, the number of contexts the row rests on.

    Args:
        metrics: model label -> the content of its metrics.json (None when absent).
    """
    scores = {label: scores_of(m) for label, m in metrics.items()}
    settings = next((m.get("settings", {}) for m in metrics.values() if m), {})
    header = ["Model", *METRIC_COLUMNS.values(), "n"]
    if settings.get("bertscore_backbone"):
        label = f"{settings['bertscore_backbone']}, L{settings['bertscore_num_layers']}"
        header[header.index("BERTScore")] = f"BERTScore ({label})"
    rows = delta_rows(scores, list(METRIC_COLUMNS))
    for row, m in zip(rows, metrics.values(), strict=True):
        row.append(str((m or {}).get("settings", {}).get("n", "–")))
    return markdown_table(header, rows)


def esconv_table(metrics: dict[str, dict | None]) -> str:
    """The ESConv-toolkit metric set of each model (metrics.json `esconv`), x100."""
    scores = {label: (m or {}).get("esconv", {}).get("scores", {}) for label, m in metrics.items()}
    rows = delta_rows(scores, list(ESCONV_COLUMNS))
    for row, m in zip(rows, metrics.values(), strict=True):
        row.append(str((m or {}).get("settings", {}).get("n", "–")))
    return markdown_table(["Model", *ESCONV_COLUMNS.values(), "n"], rows)


def judge_table(judged: dict[str, pa.Table]) -> str:
    """Table 7 layout: mean judge score (1-5) per dimension, missing verdicts counted, and the
    number of contexts judged."""
    means: dict[str, dict[str, float | None]] = {}
    missing: dict[str, int] = {}
    contexts: dict[str, int] = {}
    for label, table in judged.items():
        keys = table.select(["dialogue_id", "turn_index"]).to_pylist()
        contexts[label] = len({(k["dialogue_id"], k["turn_index"]) for k in keys})
        by_model = summarize(table) if table.num_rows else {}
        if len(by_model) > 1:
            raise ValueError(
                f"{label}: judge scores of {len(by_model)} models ({', '.join(by_model)}); "
                "Table 7 takes one model's file per row"
            )
        summary = next(iter(by_model.values()), {})
        means[label] = {d: cell["mean"] for d, cell in summary.items()}
        missing[label] = sum(int(cell["missing"]) for cell in summary.values())
    dims = [d for d in JUDGE_DIMENSIONS if any(d in m for m in means.values())]
    rows = delta_rows(means, dims)
    for row in rows:
        row += [str(missing[row[0]]), str(contexts[row[0]])]
    return markdown_table(["Model", *(d.capitalize() for d in dims), "missing", "n"], rows)
