"""The ESConv toolkit's metric definitions against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from esevo_ray.evaluation import esconv_metrics as E
from esevo_ray.evaluation.lexical import corpus_distinct, ngrams

HYP = "The cat sat on the mat"
REF = "the cat is on the mat"


def test_tokenize_lowercases_and_splits_like_word_tokenize():
    assert E.tokenize("I'm sorry. That's HARD, isn't it?") == [
        "i", "'m", "sorry", ".", "that", "'s", "hard", ",", "is", "n't", "it", "?",
    ]  # fmt: skip
    # Sentences are split first, so a period inside the text is its own token too.
    assert E.tokenize("You did well. Rest now.") == ["you", "did", "well", ".", "rest", "now", "."]
    assert "Punkt" in E.tokenizer_name()


def test_distinct_skips_the_last_ngram_of_each_response_as_the_toolkit_does():
    hyps = [["a", "b", "a", "b"], ["a", "b", "c"]]
    # Toolkit bigrams: (a b) (b a) | (a b) -> 2 distinct of 3 (textbook: 3 of 5).
    assert E.distinct_k(hyps, 2) == pytest.approx(100 * 2 / 3)
    assert corpus_distinct([ngrams(h, 2) for h in hyps]) == pytest.approx(60.0)
    # Unigrams: a b a | a b -> 2 distinct of 5; the final token is never counted.
    assert E.distinct_k(hyps, 1) == pytest.approx(40.0)
    assert E.distinct_k([["x", "y", "z"]], 1) == pytest.approx(100.0)
    assert E.toolkit_ngrams(["x", "y", "z"], 1) == [("x",), ("y",)]
    # A response of exactly n tokens has no counted n-gram: no n-grams at all scores 0.
    assert E.distinct_k([["a", "b"]], 2) == 0.0


def test_bleu_cumulative_weights_with_method3_smoothing():
    hyp, ref = [E.tokenize(HYP)], [E.tokenize(REF)]
    # Matches: unigrams 5/6, bigrams 3/5, trigrams 1/4, 4-grams 0/3; equal lengths (BP 1).
    assert E.bleu_k(hyp, ref, 1) == pytest.approx(100 * 5 / 6)
    assert E.bleu_k(hyp, ref, 2) == pytest.approx(100 * math.sqrt(5 / 6 * 3 / 5))
    assert E.bleu_k(hyp, ref, 3) == pytest.approx(100 * (5 / 6 * 3 / 5 / 4) ** (1 / 3))
    # method3: the first order with no match counts 1 / (2 * 3 four-grams).
    assert E.bleu_k(hyp, ref, 4) == pytest.approx(100 * (5 / 6 * 3 / 5 / 4 / 6) ** (1 / 4))
    # No unigram match at all: 0.
    assert E.bleu_k([["x"]], [["y"]], 2) == 0.0


def test_rouge_l_uses_beta_1_2():
    # LCS("a b c d", "a c e") = 2: P = 2/4, R = 2/3, F = (1 + 1.44) P R / (R + 1.44 P).
    p, r = 2 / 4, 2 / 3
    expected = 100 * 2.44 * p * r / (r + 1.44 * p)
    assert E.rouge_l([["a", "b", "c", "d"], ["x"]], [["a", "c", "e"], ["y"]]) == pytest.approx(
        [expected, 0.0]
    )
    assert E.lcs_length(E.tokenize(HYP), E.tokenize(REF)) == 5


def test_esconv_report_names_its_set():
    report = E.esconv_report([HYP, "ok"], [REF, "okay"])
    assert list(report["scores"]) == [
        "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "distinct_1", "distinct_2",
        "distinct_3",
    ]  # fmt: skip
    assert len(report["per_response"]["rouge_l"]) == 2
    assert "myMetrics.py" in report["settings"]["source"]
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        E.esconv_report([HYP, "ok"], [REF])
