"""Automatic metrics of the paper's Table 2, as pure functions over texts; scores are x100.

Definitions (all computed with maintained libraries):

- Tokenisation, BLEU-n and Distinct-n: see `lexical.py` (13a tokens of ASCII-normalised text;
  nltk corpus BLEU with cumulative uniform weights and smoothing method1; Distinct-n per
  response and averaged over the responses that hold an n-gram, which fits the paper's
  values, as `distinct_n`, and over the whole
  corpus, over n-grams as Li et al. is commonly read, as `corpus_distinct_n`).
  Per-response BLEU uses `sentence_bleu` with the same settings.
- ROUGE-L: `rouge_score` ROUGE-L F-measure (its own tokenizer: lowercase, non-alphanumerics
  become spaces, no stemming), averaged over responses.
- METEOR: `nltk.translate.meteor_score.meteor_score` (exact, Porter-stem and WordNet-synonym
  matching; alpha 0.9, beta 3, gamma 0.5), averaged over responses. WordNet is read from
  `$NLTK_DATA`, else `<data dir>/nltk_data`.
- BERTScore: `bert_score` F1 with a local backbone (default MiniLM-L6, see backbones.py), no
  idf, no baseline rescaling, one pair at a time (no padding), averaged over responses.
  Labelled with backbone and layers.

metrics.json also carries the ESConv benchmark's own definitions (`esconv_metrics.py`) under
its `esconv` key, a second named set for comparison with the ESC literature.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from esevo_ray import profile
from esevo_ray.data.dialogue import DataError
from esevo_ray.evaluation.backbones import Backbone, bert_scorer, resolve_backbone
from esevo_ray.evaluation.esconv_metrics import esconv_report
from esevo_ray.evaluation.lexical import (
    check_pairs,
    corpus_bleu,
    corpus_distinct_n,
    distinct_per_response,
    mean_of_defined,
    sentence_bleu,
    tokenize,
    use_nltk_data_dir,
)

if TYPE_CHECKING:
    from esevo_ray.config import DataSection, EvalSection, RunConfig

logger = logging.getLogger(__name__)

# Table 2's columns, then the corpus-level Distinct.
CORPUS_METRICS = (
    "bleu_2", "bleu_3", "rouge_l", "meteor", "bertscore", "distinct_2", "distinct_3",
    "corpus_distinct_2", "corpus_distinct_3",
)  # fmt: skip
PER_RESPONSE_METRICS = (
    "bleu_2",
    "bleu_3",
    "rouge_l",
    "meteor",
    "bertscore",
    "distinct_2",
    "distinct_3",
)


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure x100 of each response (rouge-score)."""
    from rouge_score import rouge_scorer

    check_pairs(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [100.0 * scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs, strict=True)]


def ensure_wordnet(data: DataSection | None = None) -> None:
    """Put the NLTK data folder (of `data.data_dir` when given) first on nltk's search path
    and check that WordNet is there.

    Raises:
        FileNotFoundError: WordNet is in none of nltk's search folders.
    """
    import nltk

    folder = use_nltk_data_dir(data)
    try:
        nltk.data.find("corpora/wordnet.zip")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            raise FileNotFoundError(
                f"METEOR needs WordNet: no corpora/wordnet(.zip) under "
                f"{folder or 'a data dir (none found)'} or {nltk.data.path}; set NLTK_DATA "
                f"to a folder that holds it"
            ) from None


def meteor(
    hyps: Sequence[str], refs: Sequence[str], data: DataSection | None = None
) -> list[float]:
    """METEOR x100 of each response (nltk, WordNet synonyms; see `ensure_wordnet`)."""
    from nltk.translate.meteor_score import meteor_score

    check_pairs(hyps, refs)
    ensure_wordnet(data)
    out = []
    for h, r in zip(hyps, refs, strict=True):
        hyp_tokens, ref_tokens = tokenize(h), tokenize(r)
        ok = hyp_tokens and ref_tokens
        out.append(100.0 * meteor_score([ref_tokens], hyp_tokens) if ok else 0.0)
    return out


def bertscore_f1(hyps: Sequence[str], refs: Sequence[str], backbone: Backbone) -> list[float]:
    """BERTScore F1 x100 of each response on `backbone` (no idf, no rescaling).

    One pair at a time: `bert_score` pads a batch and zeroes the padded similarities before
    each token's greedy max, so a token whose best real match is negative (frequent with
    MiniLM) would score 0 instead, and a response's score would depend on its batch.
    An empty (or whitespace-only) response or reference scores 0.
    """
    check_pairs(hyps, refs)
    keep = [i for i, (h, r) in enumerate(zip(hyps, refs, strict=True)) if h.strip() and r.strip()]
    out = [0.0] * len(hyps)
    if keep:
        _, _, f1 = bert_scorer(backbone).score(
            [hyps[i] for i in keep], [refs[i] for i in keep], batch_size=1
        )
        for i, value in zip(keep, f1.tolist(), strict=True):
            out[i] = 100.0 * value
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def score_all(
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    bertscore: bool = True,
    backbone: Backbone | None = None,
    data: DataSection | None = None,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus scores and per-response scores (x100) in one pass; `data`: the run's data
    section, whose data_dir holds WordNet (see `ensure_wordnet`)."""
    check_pairs(hyps, refs)
    per: dict[str, list[float]] = {
        "bleu_2": [sentence_bleu(h, r, 2) for h, r in zip(hyps, refs, strict=True)],
        "bleu_3": [sentence_bleu(h, r, 3) for h, r in zip(hyps, refs, strict=True)],
        "rouge_l": rouge_l(hyps, refs),
        "meteor": meteor(hyps, refs, data),
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
    for n in (2, 3):
        per[f"distinct_{n}"] = distinct_per_response(hyps, n)  # None: no n-gram
        corpus[f"distinct_{n}"] = mean_of_defined(per[f"distinct_{n}"])
    for n in (2, 3):
        corpus[f"corpus_distinct_{n}"] = corpus_distinct_n(hyps, n)
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
        bleu_2, bleu_3, rouge_l, meteor, bertscore (when asked), distinct_2, distinct_3 (mean
        of per-response Distinct, the paper's), corpus_distinct_2, corpus_distinct_3.
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
    data: DataSection | None = None,
) -> dict:
    """The content of metrics.json: corpus scores, per-response scores, the settings, and the
    ESConv-toolkit metric set under `esconv`."""
    backbone = backbone or (resolve_backbone() if bertscore else None)
    corpus, per = score_all(
        hypotheses, references, bertscore=bertscore, backbone=backbone, data=data
    )
    settings: dict = {
        "n": len(hypotheses),
        # Scored as they are: an empty response scores 0 on the similarity metrics and holds
        # no n-gram for Distinct; an empty reference gives every response 0 against it.
        "empty_responses": sum(not h.strip() for h in hypotheses),
        "empty_references": sum(not r.strip() for r in references),
        "scale": 100,
        "tokenizer": "ASCII punctuation + lowercase + sacrebleu 13a",
        "bleu": "nltk corpus_bleu, cumulative uniform weights, smoothing method1",
        "rouge": "rouge-score rougeL F-measure, mean over responses",
        "meteor": "nltk meteor_score with WordNet, mean over responses",
        "distinct": "per response distinct n-grams / n-grams, mean over the responses that "
        "hold an n-gram (the paper's Distinct-n); per_response holds null for the others",
        "distinct_without_ngram": {
            f"distinct_{n}": sum(v is None for v in per[f"distinct_{n}"]) for n in (2, 3)
        },
        "corpus_distinct": "distinct n-grams / total n-grams over all responses",
        "per_response_bleu": "per_response bleu_n: nltk sentence_bleu of each response "
        "(method1); scores bleu_n is corpus BLEU, not their mean",
    }
    if backbone is not None and bertscore:
        settings["bertscore_backbone"] = backbone.name
        settings["bertscore_num_layers"] = backbone.num_layers
    return {
        "scores": corpus,
        "per_response": per,
        "settings": settings,
        "esconv": esconv_report(hypotheses, references),
    }


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
        raise DataError(f"{responses_parquet}: no responses to score")
    backbone = None
    if bertscore:
        backbone = resolve_backbone(eval_cfg.bertscore_model, eval_cfg.bertscore_num_layers)
    hyps = [r or "" for r in table.column("response").to_pylist()]
    refs = [r or "" for r in table.column("golden").to_pylist()]
    data = cfg.data if cfg is not None and not isinstance(cfg, EvalSection) else None
    with profile.timed("compute"):  # BERTScore's model load included
        report = metrics_report(hyps, refs, bertscore=bertscore, backbone=backbone, data=data)
    report["models"] = sorted(set(table.column("model").to_pylist()))
    report["keys"] = {
        "dialogue_id": table.column("dialogue_id").to_pylist(),
        "turn_index": table.column("turn_index").to_pylist(),
    }
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(report, indent=1))
    logger.info("scored %d responses: %s", table.num_rows, report["scores"])
    return report
