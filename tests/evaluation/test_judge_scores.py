"""Judge score summaries and Pearson correlation with human scores, by hand."""

from __future__ import annotations

import pyarrow as pa
import pytest

from esevo_ray.evaluation.judge_scores import pearson, pearson_by_dimension, summarize


def test_summarize_means_skip_missing():
    table = pa.Table.from_pylist(
        [
            {"model": "M0", "dimension": "empathy", "score": 2.0},
            {"model": "M0", "dimension": "empathy", "score": 5.0},
            {"model": "M0", "dimension": "empathy", "score": None},
            {"model": "M0", "dimension": "overall", "score": None},
        ]
    )
    summary = summarize(table)["M0"]
    assert summary["empathy"] == {"n": 2, "missing": 1, "mean": 3.5}
    assert summary["overall"] == {"n": 0, "missing": 1, "mean": None}


def test_pearson_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, None], [3, 2, 1, 9]) == pytest.approx(-1.0)
    # x = (1, 2, 3, 4), y = (1, 3, 2, 4): cov = 4, var_x = var_y = 5 -> r = 0.8.
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    assert pearson([1], [2]) is None
    with pytest.raises(ValueError):
        pearson([1, 2], [1])


def test_pearson_by_dimension_on_model_means():
    def table(rows):
        return pa.Table.from_pylist([{"model": m, "dimension": d, "score": s} for m, d, s in rows])

    judge = table(
        [
            ("M0", "empathy", 2),
            ("M0", "empathy", 4),
            ("M1", "empathy", 4),
            ("M2", "empathy", 5),
            ("M2", "empathy", None),
        ]
    )
    human = table([("M0", "empathy", 2.5), ("M1", "empathy", 3.0), ("M2", "empathy", 4.0)])
    # judge means 3, 4, 5 vs human 2.5, 3, 4.
    expected = pearson([3, 4, 5], [2.5, 3.0, 4.0])
    assert pearson_by_dimension(judge, human) == {"empathy": pytest.approx(expected)}
