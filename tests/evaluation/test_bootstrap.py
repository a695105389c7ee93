"""Paired bootstrap intervals: recomputed corpus metrics, clear and null differences, seeds."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pytest

from esevo_ray.evaluation import bootstrap, esconv_metrics, intervals, lexical
from esevo_ray.evaluation.metrics import metrics_report
from esevo_ray.schema import EVAL_RESPONSES, JUDGE_SCORES, conform

N = 40
WORDS = "job friend exam sleep family money work school stress lonely tired move".split()


@dataclass
class Model:
    label: str
    responses: pa.Table | None
    metrics: dict | None = None
    judge: pa.Table | None = None
    judge_settings: dict = field(default_factory=dict)


def goldens(n: int = N) -> list[str]:
    rng = random.Random(1)
    return [
        f"that {' '.join(rng.sample(WORDS, 4))} sounds hard, what happened next?" for _ in range(n)
    ]


def model(label: str, responses: list[str], judge: list[float] | None = None) -> Model:
    gold = goldens(len(responses))
    rows = [
        {"dialogue_id": f"d{i}", "turn_index": 1, "model": label, "context": [], "golden": g,
         "response": r}
        for i, (g, r) in enumerate(zip(gold, responses, strict=True))
    ]  # fmt: skip
    table = conform(pa.Table.from_pylist(rows, schema=EVAL_RESPONSES), EVAL_RESPONSES)
    metrics = metrics_report(responses, gold, bertscore=False)
    metrics["keys"] = {"dialogue_id": [r["dialogue_id"] for r in rows], "turn_index": [1] * N}
    verdicts = None
    if judge is not None:
        scores = [
            {"dialogue_id": f"d{i}", "turn_index": 1, "model": label, "dimension": "empathy",
             "score": s, "explanation": "", "attempts": 1, "error": None, "judge_model": "j"}
            for i, s in enumerate(judge)
        ]  # fmt: skip
        verdicts = conform(pa.Table.from_pylist(scores, schema=JUDGE_SCORES), JUDGE_SCORES)
    return Model(label, table, metrics, verdicts)


GENERIC = "i am sorry to hear that."


@pytest.fixture(scope="module")
def weak() -> Model:
    return model("M0", [GENERIC] * N, judge=[2.0, 1.0] * (N // 2))


@pytest.fixture(scope="module")
def strong() -> Model:
    return model("M1", goldens(), judge=[4.0, 5.0] * (N // 2))


def test_resample_counts_are_seeded_multiplicities():
    seven = tuple(f"d{i}" for i in range(7))
    counts = bootstrap.resample_counts(seven, 50, seed=3)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    assert (counts == bootstrap.resample_counts(seven, 50, seed=3)).all()
    assert not (counts == bootstrap.resample_counts(seven, 50, seed=4)).all()
    with pytest.raises(ValueError, match="n=0"):
        bootstrap.resample_counts((), 10, seed=0)


def test_resamples_draw_whole_dialogues():
    """Turns of one dialogue are drawn together, as often as their dialogue."""
    groups = ("a", "a", "a", "b", "c", "c")
    counts = bootstrap.resample_counts(groups, 200, seed=1)
    assert (counts[:, 0] == counts[:, 1]).all() and (counts[:, 1] == counts[:, 2]).all()
    assert (counts[:, 4] == counts[:, 5]).all()
    # Three dialogues drawn per resample: 3 x (a's 3, b's 1 or c's 2 contexts).
    assert set(counts.sum(axis=1)) <= set(range(3, 10)) and len(set(counts.sum(axis=1))) > 1


def test_correlated_turns_widen_the_interval():
    """Forty contexts of ten dialogues, one model right on five dialogues and the other on the
    other five: the difference rests on ten dialogues, not on forty independent turns."""
    better = model("B", [g if i < 20 else GENERIC for i, g in enumerate(goldens())])
    worse = model("W", [GENERIC if i < 20 else g for i, g in enumerate(goldens())])
    grouped = [Model(m.label, m.responses.set_column(0, "dialogue_id",
                     pa.array([f"d{i // 4}" for i in range(N)])), None)
               for m in (better, worse)]  # fmt: skip
    by_turn = bootstrap.compare(better, worse, resamples=1000, seed=0)["bleu_2"]
    by_dialogue = bootstrap.compare(*grouped, resamples=1000, seed=0)["bleu_2"]
    assert by_dialogue["dialogues"] == 10 and by_turn["dialogues"] == N
    assert by_dialogue["high"] - by_dialogue["low"] > 1.5 * (by_turn["high"] - by_turn["low"])


def test_corpus_statistics_match_the_metrics_on_the_whole_set_and_on_a_resample():
    hyps = ["the cat sat on the mat", "a b a b", "hello there", "", "the cat"]
    refs = ["the cat is on the mat", "a b c", "hello there friend", "x", "the dog"]
    hyp_tok, ref_tok = [lexical.tokenize(h) for h in hyps], [lexical.tokenize(r) for r in refs]
    whole = np.ones((1, len(hyps)))
    counts_13a = lexical.bleu_stats(hyp_tok, ref_tok, 4)
    e_hyp = [esconv_metrics.tokenize(h) for h in hyps]
    e_ref = [esconv_metrics.tokenize(r) for r in refs]
    counts_esconv = lexical.bleu_stats(e_hyp, e_ref, 4)
    for n in (1, 2, 3, 4):
        stat = bootstrap.bleu_stat(counts_13a, n, "method1")
        assert stat(whole)[0] == pytest.approx(lexical.corpus_bleu(hyps, refs, n))
        stat = bootstrap.bleu_stat(counts_esconv, n, "method3")
        assert stat(whole)[0] == pytest.approx(esconv_metrics.bleu_k(e_hyp, e_ref, n))
    # A resample drawing response 1 three times and response 0 twice: that corpus for BLEU;
    # for corpus Distinct each drawn response once.
    counts = np.array([[2, 3, 0, 0, 0]])
    drawn = [hyps[0]] * 2 + [hyps[1]] * 3
    stat = bootstrap.bleu_stat(counts_13a, 2, "method1")
    expected = lexical.corpus_bleu(drawn, [refs[0]] * 2 + [refs[1]] * 3, 2)
    assert stat(counts)[0] == pytest.approx(expected)
    grams = [lexical.ngrams(t, 2) for t in hyp_tok]
    stat = bootstrap.distinct_stat(grams)
    assert stat(whole)[0] == pytest.approx(lexical.corpus_distinct_n(hyps, 2))
    assert stat(counts)[0] == pytest.approx(lexical.corpus_distinct_n(hyps[:2], 2))
    # Per-response Distinct-3 leaves out the responses without a trigram, as the metric does.
    stat = bootstrap.mean_stat([lexical.response_distinct(t, 3) for t in hyp_tok])
    assert stat(whole)[0] == pytest.approx(lexical.distinct_n(hyps, 3))
    drawn = [hyps[0]] * 2 + [hyps[1]] * 3 + [hyps[2]] * 4 + [hyps[4]]
    assert stat(np.array([[2, 3, 4, 0, 1]]))[0] == pytest.approx(lexical.distinct_n(drawn, 3))
    assert stat(np.array([[0, 0, 1, 2, 1]]))[0] == 0.0  # no drawn response has one


def test_clearly_better_model_has_intervals_above_zero(weak, strong):
    result = bootstrap.compare(weak, strong, resamples=1000, seed=0)
    for name in ("bleu_2", "rouge_l", "meteor", "corpus_distinct_2", "esconv_bleu_2",
                 "esconv_distinct_2", "judge_empathy"):  # fmt: skip
        r = result[name]
        assert r["n"] == N and r["excludes_zero"] and r["low"] > 0, name
        assert r["low"] - 1e-9 <= r["diff"] <= r["high"] + 1e-9
    assert result["judge_empathy"]["diff"] == pytest.approx(4.5 - 1.5)


def test_identical_and_equally_good_models_have_intervals_containing_zero(weak, strong):
    same = bootstrap.compare(strong, model("M1b", goldens()), resamples=1000, seed=0)
    assert all(r["low"] == r["high"] == r["diff"] == 0 for r in same.values())
    # Two models each right on half of the contexts (the other half generic): no difference.
    half = [g if i % 2 else GENERIC for i, g in enumerate(goldens())]
    other = [GENERIC if i % 2 else g for i, g in enumerate(goldens())]
    result = bootstrap.compare(model("A", half), model("B", other), resamples=1000, seed=0)
    assert result["distinct_2"]["diff"] == 0  # every response's bigrams are all distinct
    for name in ("bleu_2", "rouge_l", "meteor", "corpus_distinct_2", "esconv_bleu_2"):
        assert result[name]["low"] < 0 < result[name]["high"], name
        assert not result[name]["excludes_zero"]


def test_seeded_intervals_are_reproducible_and_pair_on_shared_contexts(weak, strong):
    first = bootstrap.compare(weak, strong, resamples=1000, seed=5)
    assert bootstrap.compare(weak, strong, resamples=1000, seed=5) == first
    assert bootstrap.compare(weak, strong, resamples=1000, seed=6) != first
    fewer = Model("M1", strong.responses.slice(0, 30), strong.metrics, strong.judge.slice(0, 25))
    result = bootstrap.compare(weak, fewer, resamples=1000, seed=5)
    assert result["bleu_2"]["n"] == 30 and result["rouge_l"]["n"] == 30
    assert result["judge_empathy"]["n"] == 25


def test_comparisons_are_against_m0_and_the_previous_model():
    assert bootstrap.comparison_pairs(["M0", "M1", "M2"]) == [
        ("M0", "M1"), ("M0", "M2"), ("M1", "M2"),
    ]  # fmt: skip
    assert bootstrap.comparison_pairs(["M0"]) == []


def test_report_sections_mark_intervals_and_write_json(tmp_path, weak, strong):
    md = "\n".join(intervals.report_sections([weak, strong], tmp_path, resamples=1000))
    saved = json.loads((tmp_path / "intervals.json").read_text())
    assert saved["resamples"] == 1000 and saved["seed"] == 0
    [comparison] = saved["comparisons"]
    assert (comparison["base"], comparison["model"]) == ("M0", "M1")
    bleu = comparison["metrics"]["bleu_2"]
    assert (
        f"| BLEU-2 | {N} ({N}) | {bleu['base']:.2f} | {bleu['model']:.2f} | {bleu['diff']:+.2f} *"
        in md
    )
    assert "## ESConv-toolkit metrics" in md and "| Model | B-1 |" in md
    assert "### M1 vs M0" in md and "| Judge empathy | 40 (40) |" in md
    assert "1000 paired resamples of the dialogues those contexts come from" in md
    assert "earlier definition" not in md
    # A metrics.json of an earlier version: its Distinct-n is named as scored the old way.
    settings = {**weak.metrics["settings"], "distinct": "per response (0 without one), mean"}
    old = Model(weak.label, weak.responses, {**weak.metrics, "settings": settings}, weak.judge)
    md = "\n".join(intervals.report_sections([old, strong], tmp_path, resamples=100))
    assert "Distinct-n of M0 was scored under the earlier definition" in md


def test_scores_that_do_not_compare_get_no_interval(tmp_path, weak, strong):
    """BERTScore of other encoders, verdicts of other judges or judge settings: Table 2 and
    Table 7 say they do not compare; their intervals were shown, starred, all the same."""

    def scored(m: Model, encoder: str, judge_model: str, top_p: float) -> Model:
        settings = {**m.metrics["settings"], "bertscore_backbone": encoder,
                    "bertscore_num_layers": 6}  # fmt: skip
        per = {**m.metrics["per_response"], "bertscore": [0.5] * N}
        judge = m.judge.set_column(
            m.judge.schema.get_field_index("judge_model"), "judge_model",
            pa.array([judge_model] * m.judge.num_rows),
        )  # fmt: skip
        return replace(m, metrics={**m.metrics, "settings": settings, "per_response": per},
                       judge=judge, judge_settings={"backend": "endpoint", "top_p": top_p})  # fmt: skip

    base = scored(weak, "minilm", "judge-a", 0.95)
    md = "\n".join(intervals.report_sections(
        [base, scored(strong, "roberta-large", "judge-b", 0.95)], tmp_path, resamples=100
    ))  # fmt: skip
    [c] = json.loads((tmp_path / "intervals.json").read_text())["comparisons"]
    assert "bertscore" not in c["metrics"] and "judge_empathy" not in c["metrics"]
    assert "bleu_2" in c["metrics"]
    assert "| BERTScore | – | – | – | not compared: computed with other encoders " in md
    assert "| Judge empathy | – | – | – | not compared: scored by other judges " in md
    # esevo baselines' and ablate pairs-table's intervals follow the same rule.
    from esevo_ray.evaluation import ablation

    row = ablation.interval_table([{"label": "M1 vs M0", **c}], {"bertscore": "BERTScore"})
    assert "| M1 vs M0 | not compared |" in row
    intervals.report_sections([base, scored(strong, "minilm", "judge-a", 0.5)], tmp_path)
    [c] = json.loads((tmp_path / "intervals.json").read_text())["comparisons"]
    assert "bertscore" in c["metrics"]
    assert c["not_compared"] == {"judge_empathy": "judged under other settings (top_p)"}
    intervals.report_sections([base, scored(strong, "minilm", "judge-a", 0.95)], tmp_path)
    [c] = json.loads((tmp_path / "intervals.json").read_text())["comparisons"]
    assert c["not_compared"] == {} and "judge_empathy" in c["metrics"]


def test_contexts_of_one_dialogue_give_no_interval(tmp_path, weak, strong):
    """Every resample of one dialogue is that dialogue: no interval, and no `*` for a
    difference that would otherwise be one of width 0."""
    one = [Model(m.label, m.responses.set_column(0, "dialogue_id", pa.array(["d"] * N)), None)
           for m in (weak, strong)]  # fmt: skip
    r = bootstrap.compare(*one, resamples=200, seed=0)["bleu_2"]
    assert r["dialogues"] == 1 and r["diff"] > 0
    assert (r["low"], r["high"], r["excludes_zero"]) == (None, None, False)
    md = "\n".join(intervals.report_sections(one, tmp_path, resamples=200, confidence=0.9))
    assert f"| {r['diff']:+.2f} [– (one dialogue)] |" in md and " *" not in md
    assert "| difference [90% interval] |" in md


def test_contexts_of_few_dialogues_give_no_interval(weak, strong):
    """A bootstrap over two dialogues has three distinct resamples: its "95% interval" spans
    the two dialogues' differences and excluded 0 whenever both moved the same way. Below
    ten dialogues none is given."""
    few = [Model(m.label, m.responses.set_column(0, "dialogue_id",
                 pa.array([f"d{i % 9}" for i in range(N)])), None)
           for m in (weak, strong)]  # fmt: skip
    r = bootstrap.compare(*few, resamples=200, seed=0)["bleu_2"]
    assert r["dialogues"] == 9 and r["diff"] > 0
    assert (r["low"], r["high"], r["excludes_zero"]) == (None, None, False)
    assert bootstrap.difference_text(r) == f"{r['diff']:+.2f} [– (9 dialogues)]"


def test_corpus_distinct_interval_is_as_wide_as_the_bootstrap_of_the_same_mean():
    """Responses that share no n-gram and are equally long make a resample's corpus Distinct
    the mean per-response Distinct of the contexts it draws, counted once: a subsample. Its
    interval must be as wide as the bootstrap interval of that mean, which counts every draw;
    unwidened it is ~0.76 of that width and covers ~82% instead of 95%."""
    rng = np.random.default_rng(0)
    groups = [f"d{i // 3}" for i in range(180)]  # 60 dialogues of 3 contexts

    def responses() -> tuple[list[list[tuple]], list[float]]:
        kept = rng.integers(2, 11, size=len(groups))  # distinct bigrams among 10
        grams = [[(r, j % k) for j in range(10)] for r, k in enumerate(kept)]
        return grams, [10.0 * k for k in kept]

    (base_grams, base_v), (model_grams, model_v) = responses(), responses()
    corpus = bootstrap.paired_interval(
        bootstrap.distinct_stat(base_grams), bootstrap.distinct_stat(model_grams), groups
    )
    mean = bootstrap.paired_interval(
        bootstrap.mean_stat(base_v), bootstrap.mean_stat(model_v), groups
    )
    assert corpus["diff"] == pytest.approx(mean["diff"])
    width = (corpus["high"] - corpus["low"]) / (mean["high"] - mean["low"])
    assert 0.9 < width < 1.1, width
