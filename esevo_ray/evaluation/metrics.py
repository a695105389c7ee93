"""Automatic metrics of the paper's Table 2, as pure functions over texts; scores are x100.

Definitions (all computed with maintained libraries):

- Tokenisation (BLEU, METEOR, Distinct): lowercase, curly apostrophes made straight, then
  sacrebleu's `13a` tokenizer (the WMT standard: punctuation split off, contractions such as
  "i'm" kept whole).
- BLEU-n: `nltk.translate.bleu_score.corpus_bleu`, one reference per hypothesis, cumulative
  BLEU with uniform weights over 1..n-grams and the corpus brevity penalty. Smoothing:
  `SmoothingFunction().method1` (epsilon 0.1 added only to an n-gram order with zero matches),
  which equals unsmoothed BLEU whenever every order has a match, as on any real test set.
  Per-response BLEU uses `sentence_bleu` with the same settings.
- ROUGE-L: `rouge_score` ROUGE-L F-measure (its own tokenizer: lowercase, non-alphanumerics
  become spaces, no stemming), averaged over responses.
- METEOR: `nltk.translate.meteor_score.meteor_score` (exact, Porter-stem and WordNet-synonym
  matching; alpha 0.9, beta 3, gamma 0.5), averaged over responses. WordNet is read from
  `$NLTK_DATA`, else `<data dir>/nltk_data`.
- BERTScore: `bert_score` F1 with a local backbone (default MiniLM-L6, see backbones.py), no
  idf, no baseline rescaling, averaged over responses. Labelled with backbone and layers.
- Distinct-n: corpus level, the number of distinct n-grams over all responses divided by the
  total number of n-grams (n-grams do not cross response boundaries).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from esevo_ray.evaluation.backbones import Backbone, bert_scorer, resolve_backbone

if TYPE_CHECKING:
    from esevo_ray.config import EvalSection, RunConfig

logger = logging.getLogger(__name__)

CORPUS_METRICS = ("bleu_2", "bleu_3", "rouge_l", "meteor", "bertscore", "distinct_2", "distinct_3")
PER_RESPONSE_METRICS = ("bleu_2", "bleu_3", "rouge_l", "meteor", "bertscore")


@functools.cache
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def tokenize(text: str) -> list[str]:
    """Lowercased 13a tokens of `text` (the tokenisation of BLEU, METEOR and Distinct)."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    return _tokenizer_13a()(text).split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Corpus-level Distinct-n x100: distinct n-grams / all n-grams over every text."""
    grams = [g for text in texts for g in ngrams(tokenize(text), n)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def _bleu_weights(n: int) -> tuple[float, ...]:
    if n < 1:
        raise ValueError(f"BLEU order must be >= 1, got {n}")
    return tuple([1.0 / n] * n)


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], n: int) -> float:
    """Corpus BLEU-n x100 (nltk corpus_bleu, smoothing method1)."""
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    _check_pairs(hyps, refs)
    score = nltk_corpus_bleu(
        [[tokenize(r)] for r in refs],
        [tokenize(h) for h in hyps],
        weights=_bleu_weights(n),
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
        weights=_bleu_weights(n),
        smoothing_function=SmoothingFunction().method1,
    )


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure x100 of each response (rouge-score)."""
    from rouge_score import rouge_scorer

    _check_pairs(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [100.0 * scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs, strict=True)]


def nltk_data_dir() -> Path:
    """`$NLTK_DATA`, else `<data dir>/nltk_data` (where WordNet lives offline)."""
    if os.environ.get("NLTK_DATA"):
        return Path(os.environ["NLTK_DATA"].split(os.pathsep)[0])
    from esevo_ray.data.prepare import data_dir

    return data_dir() / "nltk_data"


def ensure_wordnet() -> None:
    """Put the NLTK data folder on nltk's search path and check that WordNet is there.

    Raises:
        FileNotFoundError: WordNet is in none of nltk's search folders.
    """
    import nltk

    folder = str(nltk_data_dir())
    if folder not in nltk.data.path:
        nltk.data.path.insert(0, folder)
    try:
        nltk.data.find("corpora/wordnet.zip")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            raise FileNotFoundError(
                f"METEOR needs WordNet: no corpora/wordnet(.zip) under {folder} or "
                f"{nltk.data.path}; set NLTK_DATA to a folder that holds it"
            ) from None


def meteor(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """METEOR x100 of each response (nltk, WordNet synonyms)."""
    from nltk.translate.meteor_score import meteor_score

    _check_pairs(hyps, refs)
    ensure_wordnet()
    out = []
    for h, r in zip(hyps, refs, strict=True):
        hyp_tokens, ref_tokens = tokenize(h), tokenize(r)
        ok = hyp_tokens and ref_tokens
        out.append(100.0 * meteor_score([ref_tokens], hyp_tokens) if ok else 0.0)
    return out


def bertscore_f1(hyps: Sequence[str], refs: Sequence[str], backbone: Backbone) -> list[float]:
    """BERTScore F1 x100 of each response on `backbone` (no idf, no rescaling).

    An empty (or whitespace-only) response or reference scores 0.
    """
    _check_pairs(hyps, refs)
    keep = [i for i, (h, r) in enumerate(zip(hyps, refs, strict=True)) if h.strip() and r.strip()]
    out = [0.0] * len(hyps)
    if keep:
        _, _, f1 = bert_scorer(backbone).score([hyps[i] for i in keep], [refs[i] for i in keep])
        for i, value in zip(keep, f1.tolist(), strict=True):
            out[i] = 100.0 * value
    return out


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("no hypotheses to score")
    bad = [i for i, t in enumerate([*hyps, *refs]) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"hypotheses and references must be strings; item {bad[0]} is not")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def score_all(
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    bertscore: bool = True,
    backbone: Backbone | None = None,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus scores and per-response scores (x100) in one pass."""
    _check_pairs(hyps, refs)
    per: dict[str, list[float]] = {
        "bleu_2": [sentence_bleu(h, r, 2) for h, r in zip(hyps, refs, strict=True)],
        "bleu_3": [sentence_bleu(h, r, 3) for h, r in zip(hyps, refs, strict=True)],
        "rouge_l": rouge_l(hyps, refs),
        "meteor": meteor(hyps, refs),
    }
    corpus = {
        "bleu_2": corpus_bleu(hyps, refs, 2),
        "bleu_3": corpus_bleu(hyps, refs, 3),
        "rouge_l": _mean(per["rouge_l"]),
        "meteor": _mean(per["meteor"]),
    }
    if bertscore:
        per["bertscore"] = bertscore_f1(hyps, refs, backbone or resolve_backbone())
        corpus["bertscore"] = _mean(per["bertscore"])
    corpus["distinct_2"] = distinct_n(hyps, 2)
    corpus["distinct_3"] = distinct_n(hyps, 3)
    return corpus, per


def compute_metrics(
    hypotheses: list[str],
    references: list[str],
    *,
    bertscore: bool = True,
    backbone: Backbone | None = None,
) -> dict[str, float]:
    """Table 2 metrics x100 over a corpus of responses and their golden references.

    Returns:
        bleu_2, bleu_3, rouge_l, meteor, bertscore (when asked), distinct_2, distinct_3.
    Raises:
        ValueError: the lists differ in length, are empty, or hold non-strings.
    """
    return score_all(hypotheses, references, bertscore=bertscore, backbone=backbone)[0]


def metrics_report(
    hypotheses: list[str],
    references: list[str],
    *,
    bertscore: bool = True,
    backbone: Backbone | None = None,
) -> dict:
    """The content of metrics.json: corpus scores, per-response scores and the settings."""
    backbone = backbone or (resolve_backbone() if bertscore else None)
    corpus, per = score_all(hypotheses, references, bertscore=bertscore, backbone=backbone)
    settings: dict = {
        "n": len(hypotheses),
        "scale": 100,
        "tokenizer": "lowercase + sacrebleu 13a",
        "bleu": "nltk corpus_bleu, cumulative uniform weights, smoothing method1",
        "rouge": "rouge-score rougeL F-measure, mean over responses",
        "meteor": "nltk meteor_score with WordNet, mean over responses",
        "distinct": "corpus distinct n-grams / total n-grams",
    }
    if backbone is not None and bertscore:
        settings["bertscore_backbone"] = backbone.name
        settings["bertscore_num_layers"] = backbone.num_layers
    return {"scores": corpus, "per_response": per, "settings": settings}


def score_responses(
    responses_parquet: str | Path,
    out_dir: str | Path,
    cfg: RunConfig | EvalSection | None = None,
    *,
    bertscore: bool = True,
) -> dict:
    """Compute metrics.json for a responses.parquet (EVAL_RESPONSES) into `out_dir`.

    Per-response scores are stored in the same row order as the responses file, with the
    (dialogue_id, turn_index) keys alongside.
    """
    from esevo_ray.config import EvalSection
    from esevo_ray.io import atomic_write_text
    from esevo_ray.schema import EVAL_RESPONSES, read_table

    eval_cfg = cfg if isinstance(cfg, EvalSection) else (cfg.eval if cfg else EvalSection())
    table = read_table(responses_parquet, EVAL_RESPONSES)
    if table.num_rows == 0:
        raise ValueError(f"{responses_parquet}: no responses to score")
    backbone = None
    if bertscore:
        backbone = resolve_backbone(eval_cfg.bertscore_model, eval_cfg.bertscore_num_layers)
    hyps = [r or "" for r in table.column("response").to_pylist()]
    refs = [r or "" for r in table.column("golden").to_pylist()]
    report = metrics_report(hyps, refs, bertscore=bertscore, backbone=backbone)
    report["models"] = sorted(set(table.column("model").to_pylist()))
    report["keys"] = {
        "dialogue_id": table.column("dialogue_id").to_pylist(),
        "turn_index": table.column("turn_index").to_pylist(),
    }
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(report, indent=1))
    logger.info("scored %d responses: %s", table.num_rows, report["scores"])
    return report
