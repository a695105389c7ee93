"""Token-level metrics of Table 2 as pure functions: tokenisation, Distinct-n and BLEU-n (x100).

- Tokenisation: lowercase, typographic punctuation made ASCII (curly quotes and apostrophes,
  the ellipsis, en and em dashes, no-break spaces: `ASCII_PUNCTUATION`), then sacrebleu's `13a`
  tokenizer (the WMT standard: ASCII punctuation split off, contractions such as "i'm" kept
  whole). 13a splits only ASCII punctuation, so "“hopeless”" or "sad…" would otherwise stay
  one token and a model that types curly quotes would lose n-grams against ESConv's ASCII text.
- Distinct-n, two definitions, each named for what it is:
  `distinct_n`: per response, distinct n-grams / n-grams, averaged over responses; a response
  with no n-gram (fewer than n tokens) has no score and is left out of the mean (scored 0, it
  made a model of short replies read as less diverse). This per-response mean is what fits the
  paper's Table 2 values (72.8-97.1, the verbose vanilla model lowest).
  `corpus_distinct_n`: distinct n-grams over all responses / all n-grams (n-grams do not
  cross response boundaries); it falls as the test set grows. This is the common reading of
  Li et al. 2016, whose paper divides by the number of generated tokens instead (on ESConv's
  test references: 43.3 vs 41.5 for Distinct-2).
- BLEU-n: `nltk` corpus_bleu, cumulative uniform weights over 1..n-grams, smoothing method1.
  `bleu_stats` / `bleu_from_sums` recompute nltk's corpus BLEU from per-response counts, so a
  bootstrap resample costs a matrix product instead of a new pass over the texts.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from esevo_ray.config import DataSection

Smoothing = Literal["method1", "method3"]


@functools.cache
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


ASCII_PUNCTUATION = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u2026": "...", "\u2013": " - ", "\u2014": " - ", "\u00a0": " ",
})  # fmt: skip


def tokenize(text: str) -> list[str]:
    """Lowercased 13a tokens of `text` (the tokenisation of BLEU, METEOR and Distinct)."""
    return _tokenizer_13a()(text.translate(ASCII_PUNCTUATION).lower()).split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def response_distinct(tokens: Sequence[str], n: int) -> float | None:
    """Distinct-n x100 of one token list; None when it has no n-gram: a response shorter
    than n tokens ("Hello!" for n = 3) repeats nothing, and is not repetitive either."""
    grams = ngrams(tokens, n)
    return 100.0 * len(set(grams)) / len(grams) if grams else None


def distinct_per_response(texts: Sequence[str], n: int) -> list[float | None]:
    """Distinct-n x100 of each response (the values the paper's Distinct-n averages)."""
    return [response_distinct(tokenize(t), n) for t in texts]


def mean_of_defined(values: Sequence[float | None]) -> float:
    """The mean of the values that are not None; 0 when none is."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else 0.0


def distinct_n(texts: Sequence[str], n: int) -> float:
    """The paper's Distinct-n x100: the mean of per-response Distinct-n over the responses
    that hold an n-gram. Scoring a shorter one 0 would rate a model that says more short
    greetings and goodbyes as less diverse, and Distinct-3 (which needs one token more)
    below Distinct-2, which no row of the paper's Table 2 is."""
    return mean_of_defined(distinct_per_response(texts, n))


def corpus_distinct(grams_per_response: Sequence[Sequence[tuple]]) -> float:
    """Distinct n-grams / all n-grams x100 over lists of n-grams (0 when there are none)."""
    total = sum(len(g) for g in grams_per_response)
    distinct = len({g for grams in grams_per_response for g in grams})
    return 100.0 * distinct / total if total else 0.0


def corpus_distinct_n(texts: Sequence[str], n: int) -> float:
    """Corpus-level Distinct-n x100: distinct n-grams / all n-grams over every response."""
    return corpus_distinct([ngrams(tokenize(t), n) for t in texts])


def bleu_weights(n: int) -> tuple[float, ...]:
    if n < 1:
        raise ValueError(f"BLEU order must be >= 1, got {n}")
    return tuple([1.0 / n] * n)


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], n: int) -> float:
    """Corpus BLEU-n x100 (nltk corpus_bleu, smoothing method1)."""
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    check_pairs(hyps, refs)
    score = nltk_corpus_bleu(
        [[tokenize(r)] for r in refs],
        [tokenize(h) for h in hyps],
        weights=bleu_weights(n),
        smoothing_function=SmoothingFunction().method1,
    )
    return 100.0 * score


def sentence_bleu(hyp: str, ref: str, n: int) -> float:
    """BLEU-n x100 of one response (nltk sentence_bleu, smoothing method1)."""
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

    hyp_tokens = tokenize(hyp)
    if not hyp_tokens:
        return 0.0
    return 100.0 * nltk_sentence_bleu(
        [tokenize(ref)],
        hyp_tokens,
        weights=bleu_weights(n),
        smoothing_function=SmoothingFunction().method1,
    )


def bleu_stats(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], max_n: int) -> dict:
    """Per response, the counts nltk's corpus_bleu sums (one reference per hypothesis).

    Returns:
        matches (N, max_n): clipped n-gram matches; counts (N, max_n): hypothesis n-grams,
        at least 1 (as nltk's modified_precision); hyp_len (N,), ref_len (N,).
    """
    matches = np.zeros((len(hyps), max_n))
    counts = np.zeros((len(hyps), max_n))
    for i, (hyp, ref) in enumerate(zip(hyps, refs, strict=True)):
        for n in range(1, max_n + 1):
            hyp_grams, ref_grams = Counter(ngrams(hyp, n)), Counter(ngrams(ref, n))
            matches[i, n - 1] = sum(min(c, ref_grams[g]) for g, c in hyp_grams.items())
            counts[i, n - 1] = max(1, sum(hyp_grams.values()))
    return {
        "matches": matches,
        "counts": counts,
        "hyp_len": np.array([len(h) for h in hyps], dtype=float),
        "ref_len": np.array([len(r) for r in refs], dtype=float),
    }


def bleu_from_sums(sums: dict, n: int, smoothing: Smoothing) -> np.ndarray:
    """Corpus BLEU-n x100 from summed `bleu_stats` (leading axes: one value per resample).

    Reproduces nltk's corpus_bleu: 0 without a unigram match; method1 replaces a zero match
    count by epsilon 0.1; method3 gives the k-th order with zero matches 1 / (2^k * count).
    """
    matches, counts = sums["matches"][..., :n], sums["counts"][..., :n]
    zero = matches == 0
    if smoothing == "method1":
        filled = np.where(zero, 0.1, matches)
    else:
        filled = np.where(zero, 1.0 / 2.0 ** np.cumsum(zero, axis=-1), matches)
    log_p = np.log(filled / counts).mean(axis=-1)
    hyp, ref = sums["hyp_len"], sums["ref_len"]
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(hyp > ref, 1.0, np.exp(1.0 - ref / np.where(hyp > 0, hyp, 1.0)))
    bp = np.where(hyp == 0, 0.0, bp)
    return np.where(matches[..., 0] == 0, 0.0, 100.0 * bp * np.exp(log_p))


def check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("no hypotheses to score")
    for what, texts in (("hypothesis", hyps), ("reference", refs)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(
                f"hypotheses and references must be strings; {what} {bad} is "
                f"{type(texts[bad]).__name__}"
            )


def nltk_data_dir(data: DataSection | None = None) -> Path | None:
    """`$NLTK_DATA`, else `<data dir>/nltk_data` (where WordNet lives offline; the data dir
    as `data prepare` finds it, `data.data_dir` first); None when there is no data dir."""
    if os.environ.get("NLTK_DATA"):
        return Path(os.environ["NLTK_DATA"].split(os.pathsep)[0])
    from esevo_ray.data.prepare import data_dir

    try:
        return data_dir(data) / "nltk_data"
    except FileNotFoundError:
        return None


def use_nltk_data_dir(data: DataSection | None = None) -> str | None:
    """Put the NLTK data folder (`nltk_data_dir`) first on nltk's search path; return it
    (None: no data dir)."""
    import nltk

    folder = nltk_data_dir(data)
    if folder is None:
        return None
    if str(folder) in nltk.data.path:
        nltk.data.path.remove(str(folder))
    nltk.data.path.insert(0, str(folder))
    return str(folder)
