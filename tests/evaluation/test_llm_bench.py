"""`esevo bench llm` without lm-evaluation-harness: a clear message, nothing written."""

from __future__ import annotations

import importlib.util

import pytest

from esevo_ray import cli
from esevo_ray.evaluation.llm_bench import PAPER_TASKS, primary_score


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is not None, reason="lm_eval is installed")
def test_bench_llm_without_lm_eval_says_what_is_missing(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "llm", "--endpoint", "http://127.0.0.1:9", "--tasks", "gsm8k,ifeval"]
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lm-evaluation-harness is not installed (no Python module 'lm_eval')" in err
    assert 'pip install -c constraints.txt "lm-eval[api]"' in err and "datasets cache" in err
    assert not out.exists()


def test_multiple_choice_tasks_over_chat_are_refused_before_anything_runs(tmp_path, capsys):
    from esevo_ray.evaluation.llm_bench import default_tasks

    assert default_tasks("chat") == ["gsm8k", "ifeval", "mmlu_pro"]
    assert default_tasks("completions") == list(PAPER_TASKS)
    out = tmp_path / "bench"
    argv = ["bench", "llm", "--endpoint", "http://127.0.0.1:9", "--out", str(out)]
    assert cli.main([*argv, "--tasks", "gsm8k,openbookqa"]) == 2
    err = capsys.readouterr().err
    assert "tasks ['openbookqa'] are scored by log-likelihood" in err and "--api completions" in err
    assert not out.exists()


def test_paper_tasks_and_primary_metric():
    assert PAPER_TASKS == ("gsm8k", "ifeval", "truthfulqa_mc2", "openbookqa", "mmlu_pro")
    metrics = {
        "alias": "gsm8k",
        "exact_match,strict-match": 0.5,
        "exact_match_stderr,strict-match": 0.1,
    }
    assert primary_score("gsm8k", metrics) == 50.0
    assert primary_score("other", {"alias": "x", "acc_stderr,none": 0.1, "acc,none": 0.25}) == 25.0
    assert primary_score("other", {"alias": "x"}) is None


def test_the_average_needs_every_task(tmp_path):
    """An average over the tasks that happened to score is not comparable with Table 4's."""
    from esevo_ray.evaluation.llm_bench import _write_results

    results = {"results": {"gsm8k": {"exact_match,strict-match": 0.5}, "hellaswag": {}}}
    _write_results(results, ["gsm8k", "hellaswag"], "m1", tmp_path)
    row = (tmp_path / "table.md").read_text().strip().splitlines()[-1]
    assert [c.strip() for c in row.strip("|").split("|")] == ["m1", "50.00", "–", "–"]
    results["results"]["hellaswag"] = {"acc_norm,none": 0.3}
    _write_results(results, ["gsm8k", "hellaswag"], "m1", tmp_path)
    assert (tmp_path / "table.md").read_text().strip().endswith("| 40.00 |")


def test_results_go_to_the_models_own_folder_and_replace_only_an_earlier_runs(
    tmp_path, capsys, monkeypatch
):
    """Table 4 needs a row per model: benchmarking m2 after m1 under the default --out
    replaced m1's results, and an --out of other files had its results.json replaced."""
    from esevo_ray.evaluation import llm_bench

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "draft.md").write_text("mine")
    argv = ["bench", "llm", "--endpoint", "http://127.0.0.1:9", "--tasks", "gsm8k"]
    assert cli.main([*argv, "--served-model", "m1", "--out", str(mine)]) == 2
    assert f"{mine} exists and is not a benchmark results folder" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["draft.md"]
    asked = []
    monkeypatch.setattr(llm_bench, "run_lm_eval", lambda *a, **k: asked.append(a[2]) or {})
    for model in ("m1", "m2", "/models/Llama-3-8B", "meta-llama/Llama-3-8B"):
        assert cli.main([*argv, "--served-model", model]) == 0
    # vLLM names a model by its path, or org/name: one folder under bench/llm all the same
    assert asked == ["bench/llm/m1", "bench/llm/m2", "bench/llm/_models_Llama-3-8B",
                     "bench/llm/meta-llama_Llama-3-8B"]  # fmt: skip
