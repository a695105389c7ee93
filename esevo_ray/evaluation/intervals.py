"""Report sections that say how far a difference can be trusted: the ESConv-toolkit metrics and
paired bootstrap intervals of every comparison (each model against M0, and M^t against
M^{t-1}), kept in `intervals.json` beside the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from esevo_ray.evaluation import bootstrap
from esevo_ray.evaluation.judge import differing_settings
from esevo_ray.evaluation.tables import (
    ESCONV_COLUMNS,
    METRIC_COLUMNS,
    bertscore_encoder,
    esconv_table,
)
from esevo_ray.io import atomic_write_text

INTERVALS_FILE = "intervals.json"


def metric_label(name: str) -> str:
    """Display name of a metric key of `bootstrap.compare`."""
    if name.startswith("judge_"):
        return f"Judge {name.removeprefix('judge_')}"
    if name.startswith("esconv_"):
        return f"ESConv {ESCONV_COLUMNS.get(name.removeprefix('esconv_'), name)}"
    return METRIC_COLUMNS.get(name, name)


def not_compared(base: bootstrap.Evaluated, model: bootstrap.Evaluated) -> dict[str, str]:
    """Why some scores of `base` and `model` do not compare, by the key of `bootstrap.compare`
    ("judge" for every judge dimension): BERTScore of other encoders, verdicts of other
    judges or settings (the rule of Table 7)."""
    why: dict[str, str] = {}
    encoders = sorted({e for m in (base, model) if (e := bertscore_encoder(m.metrics))})
    if len(encoders) > 1:
        why["bertscore"] = f"computed with other encoders ({'; '.join(encoders)})"
    if base.judge is not None and model.judge is not None:
        judges = [sorted(set(m.judge.column("judge_model").to_pylist())) for m in (base, model)]
        if judges[0] != judges[1]:
            why["judge"] = f"scored by other judges ({' vs '.join(', '.join(j) for j in judges)})"
        elif differ := differing_settings([base.judge_settings, model.judge_settings]):
            why["judge"] = f"judged under other settings ({', '.join(differ)})"
    return why


def comparison(
    base: bootstrap.Evaluated, model: bootstrap.Evaluated, *, cache: dict | None = None, **options
) -> dict:
    """{"metrics": `bootstrap.compare` of model - base less the scores that do not compare,
    "not_compared": those, with why (`not_compared`)}."""
    why = not_compared(base, model)
    metrics = bootstrap.compare(base, model, cache=cache, **options)
    left = {n: why.get(n, why.get("judge") if n.startswith("judge_") else None) for n in metrics}
    return {
        "metrics": {n: r for n, r in metrics.items() if left[n] is None},
        "not_compared": {n: w for n, w in left.items() if w is not None},
    }


def intervals(
    models: Sequence[bootstrap.Evaluated],
    *,
    resamples: int = bootstrap.RESAMPLES,
    seed: int = bootstrap.SEED,
    confidence: float = bootstrap.CONFIDENCE,
) -> dict:
    """The content of intervals.json: every comparison's paired bootstrap intervals."""
    by_label = {m.label: m for m in models}
    options = {"resamples": resamples, "seed": seed, "confidence": confidence}
    cache: dict = {}
    comparisons = [
        {"base": base, "model": model,
         **comparison(by_label[base], by_label[model], cache=cache, **options)}
        for base, model in bootstrap.comparison_pairs(list(by_label))
    ]  # fmt: skip
    return {
        "method": "paired percentile bootstrap over evaluation dialogues (each resample "
        "draws whole dialogues with their contexts); corpus metrics recomputed on each "
        "resample, per-response metrics and judge scores averaged",
        **options,
        "min_dialogues": bootstrap.MIN_DIALOGUES,  # fewer: no interval (low, high null)
        "comparisons": comparisons,
    }


def _rows(comparison: dict, confidence: float) -> list[str]:
    lines = [
        f"| Metric | contexts (dialogues) | {comparison['base']} | {comparison['model']} | "
        f"difference [{100 * confidence:.0f}% interval] |",
        "|---|---|---|---|---|",
    ]
    for name, r in comparison["metrics"].items():
        lines.append(
            f"| {metric_label(name)} | {r['n']} ({r['dialogues']}) | {r['base']:.2f} | "
            f"{r['model']:.2f} | {bootstrap.difference_text(r)} |"
        )
    for name, why in comparison.get("not_compared", {}).items():
        lines.append(f"| {metric_label(name)} | – | – | – | not compared: {why} |")
    return lines


def _distinct_scored_zero(metrics: dict) -> bool:
    """Whether a metrics.json predates leaving responses without an n-gram out of Distinct-n."""
    return "(0 without one)" in str(metrics.get("settings", {}).get("distinct", ""))


def _esconv_tokenizers(metrics: dict[str, dict | None]) -> str:
    """The tokenizer each model's ESConv-toolkit scores were computed with, as recorded: the
    toolkit's nltk.word_tokenize needs an nltk download, without which a stand-in ran."""
    used = {
        label: m["esconv"].get("settings", {}).get("tokenizer", "not recorded")
        for label, m in metrics.items()
        if m and "esconv" in m
    }
    if len(set(used.values())) == 1:
        return next(iter(used.values()))
    return "; ".join(f"{label}: {name}" for label, name in used.items())


def report_sections(models: Sequence[bootstrap.Evaluated], out: Path, **options) -> list[str]:
    """Markdown of the ESConv-toolkit table and the interval tables; writes intervals.json.

    Args:
        models: evaluated models in order, M0 first (report.Stage objects).
        out: the report folder.
        options: resamples, seed, confidence (see `intervals`).
    """
    md: list[str] = []
    metrics = {m.label: m.metrics for m in models}
    if old := [label for label, m in metrics.items() if m and _distinct_scored_zero(m)]:
        md += [
            f"Distinct-n of {', '.join(old)} was scored under the earlier definition, in which "
            "a response without an n-gram scored 0 and counted in the mean (its intervals "
            "below use the current one): `esevo eval` on the same responses scores it again.",
            "",
        ]
    if any(m and "esconv" in m for m in metrics.values()):
        md += [
            "## ESConv-toolkit metrics",
            "",
            esconv_table(metrics),
            "",
            "As the ESConv authors' metric code computes them: tokens by "
            f"{_esconv_tokenizers(metrics)}, corpus BLEU-n (method3 smoothing), LCS ROUGE-L "
            "(beta 1.2) and corpus Distinct-n, whose loop skips each response's last n-gram "
            "(kept for comparability).",
            "",
        ]
    result = intervals(models, **options)
    atomic_write_text(out / INTERVALS_FILE, json.dumps(result, indent=1))
    done = [c for c in result["comparisons"] if c["metrics"] or c["not_compared"]]
    if not done:
        return md
    md += [
        "## Paired bootstrap intervals",
        "",
        "Difference (model - base) on the contexts both models share, with the "
        f"{bootstrap.method_text(result['confidence'], result['resamples'], result['seed'])}; "
        "`*`: the interval excludes 0 (for that one comparison: with some twenty metrics "
        "and several comparisons, a few marks are expected by chance alone). Judge rows use "
        "the contexts judged for both models. "
        "A bootstrap over a few dialogues covers far less than its level, and on a few dozen "
        f"an interval is itself rough. Every number is in `{INTERVALS_FILE}`.",
        "",
    ]
    for c in done:
        md += [
            f"### {c['model']} vs {c['base']}",
            "",
            *_rows(c, result["confidence"]),
        ]
        md.append("")
    return md
