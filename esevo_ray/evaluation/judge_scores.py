"""Summaries of judge scores, and their Pearson correlation with human scores."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa


def summarize(scores: pa.Table) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """model -> dimension -> {mean, n, missing} over non-missing verdicts."""
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for row in scores.select(["model", "dimension", "score"]).to_pylist():
        cell = out.setdefault(row["model"], {}).setdefault(
            row["dimension"], {"sum": 0.0, "n": 0, "missing": 0}
        )
        if row["score"] is None:
            cell["missing"] += 1
        else:
            cell["sum"] += row["score"]
            cell["n"] += 1
    for dims in out.values():
        for cell in dims.values():
            total = cell.pop("sum")
            cell["mean"] = total / cell["n"] if cell["n"] else None
    return out


def pearson(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Pearson r between judge and human scores, over pairs where both are present.

    Returns None when fewer than two pairs remain or either side is constant.
    """
    import statistics

    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} judge scores but {len(y)} human scores")
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None]
    if len(pairs) < 2:
        return None
    try:
        return statistics.correlation([a for a, _ in pairs], [b for _, b in pairs])
    except statistics.StatisticsError:
        return None


def pearson_by_dimension(
    judge_scores: pa.Table,
    human_scores: pa.Table,
    on: Sequence[str] = ("model",),
    min_points: int = 2,
) -> dict[str, float | None]:
    """Per dimension, Pearson r between judge and human mean scores grouped by `on`; None
    where fewer than `min_points` groups have both.

    With on=("model",) this correlates model-level means (Table 7's p); with
    on=("dialogue_id", "turn_index", "model") it correlates single responses. Both tables need
    the `on` columns, `dimension` and `score`; missing scores are left out of the means.
    """

    def means(table: pa.Table, name: str) -> dict[tuple, float]:
        need = [*on, "dimension", "score"]
        absent = [c for c in need if c not in table.column_names]
        if absent:
            raise ValueError(f"{name} scores lack columns {absent} (has {table.column_names})")
        sums: dict[tuple, list[float]] = {}
        for row in table.select(need).to_pylist():
            if row["score"] is not None:
                key = (row["dimension"], *(row[c] for c in on))
                sums.setdefault(key, []).append(float(row["score"]))
        return {k: sum(v) / len(v) for k, v in sums.items()}

    judge_means, human_means = means(judge_scores, "judge"), means(human_scores, "human")
    out: dict[str, float | None] = {}
    for dim in sorted({k[0] for k in judge_means}):
        keys = sorted(k for k in judge_means if k[0] == dim and k in human_means)
        out[dim] = (
            pearson([judge_means[k] for k in keys], [human_means[k] for k in keys])
            if len(keys) >= min_points
            else None
        )
    return out
