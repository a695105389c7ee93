"""The analysis sections of the run report: phrases, lengths, relevance, and the pairs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from esevo_ray.evaluation import analysis, plots
from esevo_ray.evaluation.tables import markdown_table


def response_sections(
    responses: dict[str, pa.Table], out: Path, relevance: analysis.Method
) -> list[str]:
    """Formulaic phrases, response lengths and relevance of each model's responses."""
    texts = {m: [r or "" for r in t.column("response").to_pylist()] for m, t in responses.items()}
    return [
        *_phrases_section(texts, out),
        *_length_section(texts, out),
        *_relevance_section(responses, out, relevance),
    ]


def _phrases_section(texts: dict[str, list[str]], out: Path) -> list[str]:
    formulaic = analysis.formulaic_report(texts)
    phrases = formulaic["phrases"]
    rows = [[m, *(f"{formulaic['shares'][m][p]:.1f}" for p in phrases)] for m in texts]
    figure = plots.grouped_bars(
        formulaic["shares"],
        phrases,
        out / "phrases.png",
        title="Responses containing each phrase",
        ylabel="% of responses",
    )
    md = [
        "## Formulaic phrases",
        "",
        markdown_table(["Model", *(f'"{p}"' for p in phrases)], rows),
        "",
        "Percent of responses that contain the phrase (the paper's two phrases, then the most "
        "frequent three-word openers over all models).",
        "",
        f"![phrases]({figure})",
        "",
    ]
    return md


def _length_section(texts: dict[str, list[str]], out: Path) -> list[str]:
    lengths = {m: analysis.length_stats(t) for m, t in texts.items()}
    rows = [
        [m, str(s["n"]), f"{s['mean']:.1f}", f"{s['median']:.1f}", str(s["p90"]), str(s["max"])]
        for m, s in lengths.items()
        if s["n"]
    ]
    figure = plots.boxplot(
        {m: [len(x.split()) for x in t] for m, t in texts.items()},
        out / "lengths.png",
        title="Response length",
        ylabel="words",
    )
    return [
        "## Response length",
        "",
        markdown_table(["Model", "n", "mean", "median", "p90", "max"], rows),
        "",
        f"![lengths]({figure})",
        "",
    ]


def _relevance_section(
    responses: dict[str, pa.Table], out: Path, relevance: analysis.Method
) -> list[str]:
    rel = {m: analysis.responses_analysis(t, relevance)["relevance"] for m, t in responses.items()}
    first = next(iter(responses.values()))
    user = [analysis.user_statements(c) for c in first.column("context").to_pylist()]
    golden = [g or "" for g in first.column("golden").to_pylist()]
    rel["golden"] = analysis.similarity(user, golden, relevance)
    rows = [
        [m, *(f"{analysis.distribution(v)[k]:.3f}" for k in ("mean", "median", "stdev"))]
        for m, v in rel.items()
        if v
    ]
    figure = plots.histograms(
        {"responses": rel}, out / "relevance.png", xlabel=_axis(relevance), ylabel="responses"
    )
    return [
        "## Relevance to the user's last turn",
        "",
        markdown_table(["Model", "mean", "median", "stdev"], rows),
        "",
        f"Measure: {_measure(relevance)}.",
        "",
        f"![relevance]({figure})",
        "",
    ]


def pairs_sections(pairs: dict[str, pa.Table], out: Path, relevance: analysis.Method) -> list[str]:
    results = {it: analysis.pairs_analysis(t, relevance) for it, t in pairs.items()}
    sources = list(dict.fromkeys(s for r in results.values() for s in r["fallback_rates"]))
    rows = []
    for it, r in results.items():
        means = [
            analysis.distribution(r[k]).get("mean")
            for k in ("relevance_chosen", "relevance_rejected", "similarity")
        ]
        rows.append(
            [
                it,
                str(r["n"]),
                *("–" if m is None else f"{m:.3f}" for m in means),
                *(f"{r['fallback_rates'].get(s, 0.0):.1f}" for s in sources),
            ]
        )
    header = [
        "Iteration",
        "pairs",
        "relevance chosen",
        "relevance rejected",
        "chosen-rejected similarity",
        *(f"% {s}" for s in sources),
    ]
    panels = {
        it: {"chosen": r["relevance_chosen"], "rejected": r["relevance_rejected"]}
        for it, r in results.items()
    }
    rel_fig = plots.histograms(
        panels, out / "pairs_relevance.png", xlabel=_axis(relevance), ylabel="pairs"
    )
    sim_fig = plots.histograms(
        {"chosen vs rejected": {it: r["similarity"] for it, r in results.items()}},
        out / "pairs_similarity.png",
        xlabel=_axis(relevance),
        ylabel="pairs",
    )
    return [
        "## Preference pairs per iteration",
        "",
        markdown_table(header, rows),
        "",
        f"Relevance to the user's last turn and similarity: {_measure(relevance)}. "
        "`% <source>`: share of pairs whose chosen response came from that source "
        "(refined, or a golden fallback).",
        "",
        f"![pair relevance]({rel_fig})",
        "",
        f"![pair similarity]({sim_fig})",
        "",
    ]


def _measure(method: analysis.Method) -> str:
    if method == "embedding":
        return "cosine of MiniLM-L6 mean-pooled sentence embeddings"
    return "Jaccard index of the word sets"


def _axis(method: analysis.Method) -> str:
    return "cosine similarity" if method == "embedding" else "Jaccard index"
