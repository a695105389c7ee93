"""Markdown tables of the report, laid out like the paper's Tables 2 and 7."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from esevo_ray.config import JUDGE_DIMENSIONS
from esevo_ray.errors import UsageError
from esevo_ray.evaluation.judge import differing_settings

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


def read_metrics(path: Path) -> dict | None:
    """An eval folder's metrics.json; None when there is none.

    Raises:
        UsageError: it is not a JSON object (with a "scores" object, if any), naming it.
    """
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not JSON ({e}): evaluate that model again") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("scores", {}), dict):
        raise UsageError(
            f"{path} is not a metrics.json (an object with a 'scores' object): evaluate that "
            "model again"
        )
    return metrics


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


def bertscore_encoder(metrics: dict | None) -> str | None:
    """The encoder and layer a metrics.json's BERTScore was computed with ("name, L6");
    scores of different ones do not compare. None when it does not say."""
    settings = (metrics or {}).get("settings", {})
    if not settings.get("bertscore_backbone"):
        return None
    return f"{settings['bertscore_backbone']}, L{settings['bertscore_num_layers']}"


def metrics_table(metrics: dict[str, dict | None]) -> str:
    """Table 2 layout: models as rows, metrics x100, (+/-) change from the previous model, and
    `n`, the number of contexts the row rests on.

    Args:
        metrics: model label -> the content of its metrics.json (None when absent).
    """
    scores = {label: scores_of(m) for label, m in metrics.items()}
    header = ["Model", *METRIC_COLUMNS.values(), "n"]
    backbones = list(dict.fromkeys(b for m in metrics.values() if (b := bertscore_encoder(m))))
    if len(backbones) == 1:
        header[header.index("BERTScore")] = f"BERTScore ({backbones[0]})"
    elif backbones:  # rows scored with other backbones do not compare
        header[header.index("BERTScore")] = f"BERTScore (differs by row: {'; '.join(backbones)})"
    rows = delta_rows(scores, list(METRIC_COLUMNS))
    for row, m in zip(rows, metrics.values(), strict=True):
        row.append(contexts_text(m))
    return markdown_table(header, rows)


def contexts_text(metrics: dict | None) -> str:
    """A row's `n`: its contexts, the dialogues they come from (turns of one dialogue are far
    from independent: 16 contexts may be 2 dialogues), and the empty responses and
    references among them (scored as they are: 0 on the similarity metrics)."""
    settings = (metrics or {}).get("settings", {})
    ids = (metrics or {}).get("keys", {}).get("dialogue_id")
    notes = []
    if ids:
        d = len(set(ids))
        notes.append(f"{d} dialogue{'' if d == 1 else 's'}")
    if empty := settings.get("empty_responses"):
        notes.append(f"{empty} empty response{'' if empty == 1 else 's'}")
    if unreferenced := settings.get("empty_references"):
        notes.append(f"{unreferenced} without a reference")
    n = str(settings.get("n", "–"))
    return f"{n} ({'; '.join(notes)})" if notes else n


def esconv_table(metrics: dict[str, dict | None]) -> str:
    """The ESConv-toolkit metric set of each model (metrics.json `esconv`), x100."""
    scores = {label: (m or {}).get("esconv", {}).get("scores", {}) for label, m in metrics.items()}
    rows = delta_rows(scores, list(ESCONV_COLUMNS))
    for row, m in zip(rows, metrics.values(), strict=True):
        row.append(contexts_text(m))
    return markdown_table(["Model", *ESCONV_COLUMNS.values(), "n"], rows)


@dataclass
class JudgeMeans:
    """Table 7's numbers, by row label: each dimension's mean over the contexts every row has
    a verdict for on it (`common`), so a change between rows compares the same contexts."""

    means: dict[str, dict[str, float | None]]  # label -> dimension -> mean (None: not judged)
    common: dict[str, set[tuple]]  # dimension -> (dialogue_id, turn_index) every row scored
    scored: dict[str, dict[str, dict[tuple, float]]]  # label -> dimension -> context -> score
    missing: dict[str, int]  # label -> verdicts that stayed unparseable or failed
    judges: dict[str, str]  # label -> judge model(s)
    models: dict[str, str]  # label -> the model its file judged


def judge_means(judged: dict[str, pa.Table]) -> JudgeMeans:
    """The means Table 7 shows of judge score files, one file per row.

    Raises:
        ValueError: a file holds verdicts of several models (one file per row).
    """
    out = JudgeMeans({}, {}, {}, {}, {}, {})
    for label, table in judged.items():
        models = sorted(set(table.column("model").to_pylist()))
        if len(models) > 1:
            raise ValueError(
                f"{label}: judge scores of {len(models)} models ({', '.join(models)}); "
                "Table 7 takes one model's file per row"
            )
        rows = table.select(["dialogue_id", "turn_index", "dimension", "score"]).to_pylist()
        scored: dict[str, dict[tuple, float]] = {}
        for r in rows:
            if r["score"] is not None:
                context = (r["dialogue_id"], r["turn_index"])
                scored.setdefault(r["dimension"], {})[context] = r["score"]
        out.scored[label] = scored
        out.missing[label] = sum(r["score"] is None for r in rows)
        out.judges[label] = ", ".join(sorted(set(table.column("judge_model").to_pylist())))
        out.models[label] = models[0] if models else label
    dims = [d for d in JUDGE_DIMENSIONS if any(d in s for s in out.scored.values())]
    # Over the rows judged on it: a row not judged on a dimension shows "–" there, and
    # leaves the other rows' means.
    out.common = {
        d: set.intersection(*(set(s[d]) for s in out.scored.values() if d in s)) for d in dims
    }
    out.means = {
        label: {d: sum(s[d][k] for k in out.common[d]) / len(out.common[d])
                if out.common[d] and d in s else None for d in dims}
        for label, s in out.scored.items()
    }  # fmt: skip
    return out


def judge_table(
    judged: dict[str, pa.Table],
    settings: dict[str, dict] | None = None,
    means: JudgeMeans | None = None,
) -> str:
    """Table 7 layout: `judge_means` per dimension (`means`, where the caller has them),
    each file's missing verdicts, the number of contexts the means are over, and the judge.
    `settings`: each row's judge settings (judge.judged_under), named under the table where
    they differ.

    Raises:
        ValueError: a file holds verdicts of several models (one file per row).
    """
    table7 = means or judge_means(judged)
    means, common, scored, judges = table7.means, table7.common, table7.scored, table7.judges
    dims = list(common)
    sizes = sorted({len(keys) for keys in common.values()})
    n = "–" if not sizes else str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    rows = delta_rows(means, dims)
    for row in rows:
        row += [str(table7.missing[row[0]]), n]
    table = markdown_table(["Model", *(d.capitalize() for d in dims), "missing", "n"], rows)
    if len(set(judges.values())) > 1:
        named = "; ".join(f"{label}: {j}" for label, j in judges.items())
        return (
            f"{table}\n\nThe rows were scored by different judges ({named}): they do not compare."
        )
    # a penalty read as caps in one row and as points off in another, say
    if differ := differing_settings(list((settings or {}).values())):
        return (
            f"{table}\n\nJudge: {next(iter(judges.values()))}, but the rows were judged under "
            f"different settings ({', '.join(differ)}): they do not compare."
        )
    note = ""
    fewest = min(len({k for keys in s.values() for k in keys}) for s in scored.values())
    if sizes and sizes[0] < fewest / 2:  # other samples (other judge seeds: 5 of 100 shared)
        note = (f" The rows share {sizes[0]} of the {fewest} or more contexts each was judged "
                "on (other samples: another judge seed, say); `n` counts those.")  # fmt: skip
    return f"{table}\n\nJudge: {next(iter(judges.values()))}.{note}"
