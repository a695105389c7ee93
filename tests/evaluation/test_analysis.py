"""Analyses: formulaic phrases, lengths, relevance, similarity, fallback rates."""

from __future__ import annotations

import pytest

from esevo_ray.evaluation import analysis
from tests.evaluation.helpers import pairs_table


def test_contains_phrase_normalises_and_respects_word_boundaries():
    assert analysis.contains_phrase("Okay. I am very sorry", "i'm very sorry")
    assert analysis.contains_phrase("I\u2019m sorry to hear that!", "I'm sorry to hear")
    assert analysis.contains_phrase("Well,  IT SOUNDS\nLIKE a lot.", "it sounds like")
    assert not analysis.contains_phrase("It sounds likely to work.", "it sounds like")
    assert not analysis.contains_phrase("Swim sorry to hear", "im sorry to hear")


def test_formulaic_report_shares_by_hand():
    responses = {
        "M0": [
            "It sounds like you are tired.",
            "I'm sorry to hear that.",
            "It sounds like a hard week.",
            "What happened?",
        ],
        "M1": ["What happened next?", "I am sorry to hear about your job."],
    }
    report = analysis.formulaic_report(responses, k=2)
    assert report["phrases"][:2] == ["it sounds like", "i'm sorry to hear"]
    # Openers over all six responses: "it sounds like" (2) and "i'm sorry to" (2) are part of
    # the listed phrases, "what happened?" is too short, which leaves "what happened next".
    assert report["phrases"] == ["it sounds like", "i'm sorry to hear", "what happened next"]
    assert report["shares"]["M1"]["what happened next"] == pytest.approx(50.0)
    assert report["shares"]["M0"]["it sounds like"] == pytest.approx(50.0)
    assert report["shares"]["M0"]["i'm sorry to hear"] == pytest.approx(25.0)
    assert report["shares"]["M1"]["i'm sorry to hear"] == pytest.approx(50.0)
    assert report["shares"]["M1"]["it sounds like"] == 0.0
    assert report["openers"]["M0"][0] == ("it sounds like", 2)


def test_an_opener_with_punctuation_counts_where_it_opens():
    """Openers are word sequences ("Oh, I see." opens with "oh i see"): the share of the
    responses holding one must count the responses it was found in."""
    texts = ["Oh, I see. That must be hard.", "Oh, I see. Tell me more.", "Oh, I see! Why?", "Hmm."]
    report = analysis.formulaic_report({"M0": texts}, k=1)
    assert report["openers"]["M0"] == [("oh i see", 3)]
    assert report["shares"]["M0"]["oh i see"] == pytest.approx(75.0)


def test_length_stats_by_hand():
    stats = analysis.length_stats(["a b", "a b c d", "a", "a b c"])
    assert stats == {"n": 4, "mean": 2.5, "median": 2.5, "p90": 4, "min": 1, "max": 4}
    assert analysis.length_stats([]) == {"n": 0}
    # Nearest rank: the 90th percentile of 1..10 words is 9, not the longest.
    assert analysis.length_stats([" ".join("w" * n) for n in range(1, 11)])["p90"] == 9


def test_user_statements_takes_last_user_turns():
    ctx = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "two"},
    ]
    assert analysis.user_statements(ctx) == "two"
    assert analysis.user_statements(ctx, last_k=2) == "one\ntwo"
    assert analysis.user_statements([]) == ""


def test_overlap_similarity_is_word_jaccard():
    # {i, lost, my, job} vs {you, lost, your, job}: 2 shared of 6.
    assert analysis.similarity(["I lost my job"], ["You lost your job"], "overlap") == [
        pytest.approx(2 / 6)
    ]
    assert analysis.similarity([""], [""], "overlap") == [0.0]
    with pytest.raises(ValueError, match="method"):
        analysis.similarity(["a"], ["b"], "bleu")


def test_embedding_similarity_orders_related_above_unrelated():
    user = ["I lost my job and I am scared about money."] * 3
    responses = [
        "I lost my job and I am scared about money.",
        "Losing work is frightening; are you worried about paying bills?",
        "The recipe needs two eggs and a cup of flour.",
    ]
    same, related, unrelated = analysis.similarity(user, responses)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert related > unrelated + 0.2


def test_pairs_analysis_and_fallback_rates():
    pairs = pairs_table(
        1,
        chosen=[
            "Losing a job is hard, what happened?",
            "That hurts. Why did they stop?",
            "Exams can keep you up. What helps you relax?",
            "ok",
        ],
        rejected=[
            "It sounds like you are sad.",
            "It sounds like you are sad.",
            "It sounds like you are sad.",
            "ok",
        ],
        sources=["refined", "refined", "golden_parse_failure", "golden_length_rule"],
    )
    rates = analysis.fallback_rates(pairs)
    assert rates == {"refined": 50.0, "golden_parse_failure": 25.0, "golden_length_rule": 25.0,
                     "golden_unchanged": 0.0, "golden_empty_rejected": 0.0}  # fmt: skip
    result = analysis.pairs_analysis(pairs, method="overlap")
    assert result["n"] == 4
    assert result["similarity"][3] == 1.0  # identical chosen and rejected
    # "I lost my job last week and I feel useless." vs the chosen of pair 0: {job} shared.
    assert result["relevance_chosen"][0] > result["relevance_rejected"][0]
