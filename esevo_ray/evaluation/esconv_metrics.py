"""The ESConv benchmark's own metric definitions: a second, named metric set (x100).

As in the ESConv authors' metric code (thu-coai/Emotional-Support-Conversation,
`codes_zcj/metric/myMetrics.py`, class `Metric`), so results can sit beside the ESC
literature:

- Tokens: `nltk.word_tokenize(text.lower())`, which is Punkt sentence splitting (the
  pre-trained English model, nltk's `punkt_tab`) followed by `NLTKWordTokenizer`. The model is
  an nltk download; when it is not on nltk's path (`$NLTK_DATA`, else `<data dir>/nltk_data`;
  the shared data has none), the sentences are split by an untrained `PunktSentenceTokenizer`
  instead, which differs from the English model only where that model knows an abbreviation
  ("dr. smith" is two sentences untrained). `settings["tokenizer"]` says which one ran.
- BLEU-n: `nltk` corpus_bleu, weights `[1/n] * n + [0] * (4 - n)` (cumulative, uniform),
  `SmoothingFunction().method3`; 0 where nltk raises ZeroDivisionError, as the toolkit does.
- Distinct-n: corpus level, distinct n-grams / n-grams over all responses. The toolkit's loop
  `for i in range(0, len(sen) - k)` stops one n-gram early, so the LAST n-gram of every
  response is never counted (a response of exactly n tokens counts none). This off-by-one is
  reproduced on purpose: `distinct_k` is the toolkit's number, not the textbook one
  (`lexical.corpus_distinct_n` is that).
- ROUGE-L: per response, LCS precision P and recall R over tokens,
  F = (1 + b^2) P R / (R + b^2 P) with b = 1.2 (0 when P or R is 0), averaged.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

from esevo_ray.evaluation.lexical import check_pairs, corpus_distinct, ngrams, use_nltk_data_dir

BLEU_ORDERS = (1, 2, 3, 4)
DISTINCT_ORDERS = (1, 2, 3)
ROUGE_BETA = 1.2


@functools.cache
def _tokenizer() -> tuple[str, Callable[[str], list[str]]]:
    import nltk
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    use_nltk_data_dir()
    if nltk.tokenize.punkt_model_available("english"):
        return "nltk.word_tokenize (Punkt english model)", nltk.word_tokenize
    splitter, words = PunktSentenceTokenizer(), NLTKWordTokenizer()

    def offline(text: str) -> list[str]:
        return [tok for sent in splitter.tokenize(text) for tok in words.tokenize(sent)]

    return "untrained PunktSentenceTokenizer + NLTKWordTokenizer (punkt_tab not installed)", offline


def tokenizer_name() -> str:
    """Which tokenizer `tokenize` uses here: nltk.word_tokenize or the offline stand-in."""
    return _tokenizer()[0]


def tokenize(text: str) -> list[str]:
    """The toolkit's tokens: nltk.word_tokenize of the lowercased text."""
    return _tokenizer()[1](text.lower())


def toolkit_ngrams(tokens: Sequence[str], k: int) -> list[tuple[str, ...]]:
    """The n-grams the toolkit's Distinct counts: every k-gram but the last one."""
    return ngrams(tokens, k)[:-1]


def distinct_k(hyps: Sequence[Sequence[str]], k: int) -> float:
    """The toolkit's corpus Distinct-k x100 over tokenized responses (off-by-one kept)."""
    return corpus_distinct([toolkit_ngrams(h, k) for h in hyps])


def bleu_k(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], k: int) -> float:
    """The toolkit's corpus BLEU-k x100 (method3 smoothing, 4 weights, trailing zeros)."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    weights = [1.0 / k] * k + [0.0] * (4 - k)
    try:
        score = corpus_bleu(
            [[r] for r in refs], list(hyps), weights=weights,
            smoothing_function=SmoothingFunction().method3,
        )  # fmt: skip
    except ZeroDivisionError:
        warnings.warn("the bleu is invalid", stacklevel=2)
        score = 0.0
    return 100.0 * score


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b, 1):
            row.append(prev[j - 1] + 1 if x == y else max(prev[j], row[j - 1]))
        prev = row
    return prev[-1]


def rouge_l(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]]) -> list[float]:
    """The toolkit's ROUGE-L x100 of each response (LCS F-measure, beta 1.2)."""
    out = []
    for hyp, ref in zip(hyps, refs, strict=True):
        lcs = lcs_length(ref, hyp)
        p, r = lcs / max(len(hyp), 1e-10), lcs / max(len(ref), 1e-10)
        b2 = ROUGE_BETA**2
        out.append(100.0 * (1 + b2) * p * r / (r + b2 * p) if p and r else 0.0)
    return out


def esconv_report(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    """The ESConv-toolkit metric set: scores, per-response ROUGE-L, and the settings.

    Raises:
        ValueError: the lists differ in length, are empty, or hold non-strings.
    """
    check_pairs(hyps, refs)
    hyp_tokens, ref_tokens = [tokenize(h) for h in hyps], [tokenize(r) for r in refs]
    rouge = rouge_l(hyp_tokens, ref_tokens)
    scores = {f"bleu_{k}": bleu_k(hyp_tokens, ref_tokens, k) for k in BLEU_ORDERS}
    scores["rouge_l"] = sum(rouge) / len(rouge)
    scores |= {f"distinct_{k}": distinct_k(hyp_tokens, k) for k in DISTINCT_ORDERS}
    settings = {
        "source": "thu-coai/Emotional-Support-Conversation codes_zcj/metric/myMetrics.py",
        "tokenizer": f"lowercase + {tokenizer_name()}",
        "bleu": "nltk corpus_bleu, weights [1/n]*n + [0]*(4-n), smoothing method3",
        "distinct": "corpus distinct / total n-grams, last n-gram of each response not "
        "counted (the toolkit's off-by-one)",
        "rouge": "LCS F-measure, beta 1.2, mean over responses",
    }
    return {"scores": scores, "per_response": {"rouge_l": rouge}, "settings": settings}
