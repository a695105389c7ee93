"""Paired bootstrap over evaluation contexts: intervals of the score difference of two models.

Both models are scored on the same resamples of the contexts they share (keyed by
`dialogue_id`, `turn_index`), so the interval is that of the paired difference. A resample
draws whole dialogues, each context counted as often as its dialogue is drawn: the turns of
one dialogue share a seeker and a story, and drawing them one by one would treat ~2,800
correlated turns of 195 dialogues as independent and narrow the interval. A statistic
maps a (resamples, contexts) matrix of multiplicities to one value per resample:
per-response metrics are averaged with those weights; corpus metrics (corpus BLEU, corpus
Distinct) are recomputed on each resample from per-context counts (corpus Distinct counting
each drawn context once, its spread widened to the bootstrap's). The interval is the
percentile interval of the resampled differences (Efron and Tibshirani; Koehn 2004 for MT),
centred on the difference measured on all contexts (see `paired_interval`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import pyarrow as pa

from esevo_ray.evaluation import esconv_metrics, lexical
from esevo_ray.resampling import MIN_CLUSTERS

RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
# Fewer dialogues give no interval (esevo_ray/resampling.py says why).
MIN_DIALOGUES = MIN_CLUSTERS

Statistic = Callable[[np.ndarray], np.ndarray]
Key = tuple[str, int]


class Evaluated(Protocol):
    """One evaluated model as the report holds it (report.Stage)."""

    label: str

    @property
    def metrics(self) -> dict | None: ...
    @property
    def responses(self) -> pa.Table | None: ...
    @property
    def judge(self) -> pa.Table | None: ...
    @property
    def judge_settings(self) -> dict: ...


def method_text(
    confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> str:
    """How an interval was made, in one sentence for the tables that show it."""
    return (
        f"{100 * confidence:.0f}% percentile interval over {resamples} paired resamples of the "
        f"dialogues those contexts come from (every turn of a drawn dialogue counts; seed {seed}; "
        f"none on fewer than {MIN_DIALOGUES} dialogues)"
    )


@functools.lru_cache(maxsize=4)
def resample_counts(groups: tuple[str, ...], resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) multiplicities of n contexts, context i in dialogue `groups[i]`: row b
    counts how often each context's dialogue is drawn in b (dialogues drawn with replacement).

    Cached (every metric of a comparison shares the same resamples) and read-only.
    """
    n = len(groups)
    if n < 1 or resamples < 1:
        raise ValueError(f"bootstrap needs contexts and resamples, got n={n}, B={resamples}")
    names, dialogue_of = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
    g = len(names)
    idx = np.random.default_rng(seed).integers(0, g, size=(resamples, g))
    flat = (idx + g * np.arange(resamples)[:, None]).ravel()
    drawn = np.bincount(flat, minlength=resamples * g).reshape(resamples, g)
    counts = drawn[:, dialogue_of]
    counts.flags.writeable = False
    return counts


def mean_stat(values: Sequence[float | None]) -> Statistic:
    """The mean of each resample over the contexts it draws; a None value (a response with no
    n-gram, for Distinct) is left out, as `lexical.mean_of_defined` leaves it (0 when every
    drawn one is None)."""
    defined = np.array([v is not None for v in values], dtype=float)
    v = np.array([0.0 if x is None else x for x in values], dtype=float)

    def stat(counts: np.ndarray) -> np.ndarray:
        total, drawn = counts @ v, counts @ defined
        return np.divide(total, drawn, out=np.zeros_like(total), where=drawn > 0)

    return stat


def bleu_stat(stats: dict, n: int, smoothing: str) -> Statistic:
    """Corpus BLEU-n x100 of each resample from per-response `lexical.bleu_stats` (order >= n)."""
    return lambda counts: lexical.bleu_from_sums(
        {k: counts @ v for k, v in stats.items()}, n, smoothing
    )


def distinct_stat(grams_per_response: Sequence[Sequence[tuple]]) -> Statistic:
    """Corpus Distinct x100 of each resample, over the contexts it draws, each counted once.

    A context drawn twice repeats its response word for word; counting it twice would read
    resampling as lost diversity and pull the resamples of a diverse model far below its
    score (on ESConv responses the median difference moved by a third). An n-gram is distinct
    in a resample when any response holding it is drawn: n-grams of one response only are
    counted by a product, shared ones by an OR over their responses.
    """
    holders: dict[tuple, list[int]] = {}
    for r, grams in enumerate(grams_per_response):
        for g in dict.fromkeys(grams):
            holders.setdefault(g, []).append(r)
    n = len(grams_per_response)
    own = np.bincount([rs[0] for rs in holders.values() if len(rs) == 1], minlength=n)
    shared = [rs for rs in holders.values() if len(rs) > 1]
    flat = np.concatenate(shared) if shared else np.zeros(0, dtype=int)
    starts = np.cumsum([0] + [len(rs) for rs in shared[:-1]])
    lengths = np.array([len(g) for g in grams_per_response], dtype=float)

    def stat(counts: np.ndarray) -> np.ndarray:
        drawn = counts > 0
        distinct = (drawn @ own).astype(float)
        if shared:
            distinct += np.logical_or.reduceat(drawn[:, flat], starts, axis=1).sum(axis=1)
        total = drawn @ lengths
        return np.where(total > 0, 100.0 * distinct / np.maximum(total, 1), 0.0)

    stat.draws_once = True  # its resamples are subsamples: `paired_interval` widens them
    return stat


def subsample_scale(dialogues: int) -> float:
    """The factor that widens the spread of a statistic that counts each drawn dialogue once.

    Counting a drawn dialogue once turns a bootstrap resample of g dialogues into a
    subsample, without replacement, of the f*g distinct ones it holds, with
    f = 1 - (1 - 1/g)^g (0.632 for large g). Such a subsample's statistic varies around the
    whole sample's with variance (1 - f)/f times the bootstrap's (0.58): its interval would
    be about 0.76 of the right width and cover ~86% instead of 95%. Multiplying the centred
    differences by sqrt(f / (1 - f)) restores the bootstrap's spread.
    """
    f = 1.0 - (1.0 - 1.0 / dialogues) ** dialogues
    return float(np.sqrt(f / (1.0 - f))) if f < 1.0 else 1.0


def paired_interval(
    base: Statistic,
    model: Statistic,
    groups: Sequence[str],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict:
    """Point difference model - base on all contexts, and its bootstrap interval over
    resamples of their dialogues (`groups`, one per context; see `resample_counts`).

    The interval is the percentile interval of the resampled differences moved so that their
    mean is the point difference. For averaged metrics the move is nil in expectation; corpus
    Distinct depends on corpus size and a resample holds fewer distinct contexts, so its
    resamples sit off the point difference (`shift`) and only their spread is used, widened
    by `subsample_scale` (the statistic counts each drawn dialogue once).

    Contexts of fewer than MIN_DIALOGUES dialogues give no interval (`low`, `high` None,
    `excludes_zero` False): with one, every resample would be that dialogue, an interval of
    width 0 around any difference; with a few, one that covers far less than `confidence`.
    """
    n = len(groups)
    whole = np.ones((1, n))
    base_value, model_value = float(base(whole)[0]), float(model(whole)[0])
    point = model_value - base_value
    result = {"base": base_value, "model": model_value, "diff": point, "n": n,
              "dialogues": len(set(groups))}  # fmt: skip
    if result["dialogues"] < MIN_DIALOGUES:
        return {**result, "low": None, "high": None, "excludes_zero": False, "shift": 0.0}
    counts = resample_counts(tuple(groups), resamples, seed)
    diffs = model(counts) - base(counts)
    shift = float(diffs.mean()) - point
    spread = diffs - diffs.mean()
    if getattr(model, "draws_once", False) or getattr(base, "draws_once", False):
        spread = spread * subsample_scale(len(set(groups)))
    tail = (1.0 - confidence) / 2
    low, high = point + np.quantile(spread, [tail, 1.0 - tail])
    return {
        **result,
        "low": float(low),
        "high": float(high),
        "excludes_zero": bool(low > 0 or high < 0),
        "shift": shift,
    }


def difference_text(r: dict) -> str:
    """A `paired_interval` result as "+d * [+low, +high]" (`*`: the interval excludes 0)."""
    mark = " *" if r["excludes_zero"] else ""
    if r["low"] is None:
        few = "one dialogue" if r["dialogues"] == 1 else f"{r['dialogues']} dialogues"
        return f"{r['diff']:+.2f} [– ({few})]"
    return f"{r['diff']:+.2f}{mark} [{r['low']:+.2f}, {r['high']:+.2f}]"


def _keys(table: pa.Table) -> list[Key]:
    ids, turns = table.column("dialogue_id").to_pylist(), table.column("turn_index").to_pylist()
    return list(zip(ids, turns, strict=True))


def _per_response(metrics: dict | None) -> dict[Key, dict[str, float]]:
    """Stored per-response scores (metrics.json), by context key."""
    if not metrics or "keys" not in metrics:
        return {}
    keys = list(zip(metrics["keys"]["dialogue_id"], metrics["keys"]["turn_index"], strict=True))
    per = metrics.get("per_response", {})
    stored = [m for m in ("rouge_l", "meteor", "bertscore") if len(per.get(m, [])) == len(keys)]
    return {k: {m: per[m][i] for m in stored} for i, k in enumerate(keys)}


def automatic_statistics(model: Evaluated, keys: Sequence[Key]) -> dict[str, Statistic]:
    """Every automatic metric of `model` as a statistic over `keys` (in that order)."""
    rows = dict(zip(_keys(model.responses), model.responses.to_pylist(), strict=True))
    hyps = [rows[k]["response"] or "" for k in keys]
    refs = [rows[k]["golden"] or "" for k in keys]
    hyp_tok, ref_tok = [lexical.tokenize(h) for h in hyps], [lexical.tokenize(r) for r in refs]
    counts = lexical.bleu_stats(hyp_tok, ref_tok, 3)
    stats: dict[str, Statistic] = {f"bleu_{n}": bleu_stat(counts, n, "method1") for n in (2, 3)}
    stored = _per_response(model.metrics)
    for name in ("rouge_l", "meteor", "bertscore"):
        if stored and all(name in stored.get(k, {}) for k in keys):
            stats[name] = mean_stat([stored[k][name] for k in keys])
    for n in (2, 3):
        stats[f"distinct_{n}"] = mean_stat([lexical.response_distinct(t, n) for t in hyp_tok])
    for n in (2, 3):
        stats[f"corpus_distinct_{n}"] = distinct_stat([lexical.ngrams(t, n) for t in hyp_tok])
    e_hyp = [esconv_metrics.tokenize(h) for h in hyps]
    e_ref = [esconv_metrics.tokenize(r) for r in refs]
    counts = lexical.bleu_stats(e_hyp, e_ref, max(esconv_metrics.BLEU_ORDERS))
    for n in esconv_metrics.BLEU_ORDERS:
        stats[f"esconv_bleu_{n}"] = bleu_stat(counts, n, "method3")
    stats["esconv_rouge_l"] = mean_stat(esconv_metrics.rouge_l(e_hyp, e_ref))
    for n in esconv_metrics.DISTINCT_ORDERS:
        grams = [esconv_metrics.toolkit_ngrams(t, n) for t in e_hyp]
        stats[f"esconv_distinct_{n}"] = distinct_stat(grams)
    return stats


def judge_pairs(
    base: pa.Table, model: pa.Table
) -> dict[str, tuple[list[float], list[float], list[str]]]:
    """Per dimension, the scores of both models on the contexts both have a verdict for, and
    each context's dialogue."""

    def by_key(table: pa.Table) -> dict[tuple, float]:
        rows = table.select(["dialogue_id", "turn_index", "dimension", "score"]).to_pylist()
        return {
            (r["dimension"], r["dialogue_id"], r["turn_index"]): float(r["score"])
            for r in rows
            if r["score"] is not None
        }

    a, b = by_key(base), by_key(model)
    out: dict[str, tuple[list[float], list[float], list[str]]] = {}
    for key in (k for k in a if k in b):
        pair = out.setdefault(key[0], ([], [], []))
        pair[0].append(a[key])
        pair[1].append(b[key])
        pair[2].append(key[1])
    return out


def compare(
    base: Evaluated, model: Evaluated, *, cache: dict | None = None, **options
) -> dict[str, dict]:
    """Paired intervals of model - base for every automatic metric and judge dimension.

    Automatic metrics use the contexts both responses files hold; each judge dimension the
    contexts where both models have a verdict. `options` go to `paired_interval`; `cache`
    keeps each model's statistics for its next comparison on the same contexts.
    """
    cache = {} if cache is None else cache

    def statistics(m: Evaluated, keys: list[Key]) -> dict[str, Statistic]:
        key = (m.label, tuple(keys))
        if key not in cache:
            cache[key] = automatic_statistics(m, keys)
        return cache[key]

    out: dict[str, dict] = {}
    if base.responses is not None and model.responses is not None:
        theirs = set(_keys(model.responses))
        keys = [k for k in _keys(base.responses) if k in theirs]
        if keys:
            a, b = statistics(base, keys), statistics(model, keys)
            groups = [dialogue for dialogue, _ in keys]
            for name in (m for m in a if m in b):
                out[name] = paired_interval(a[name], b[name], groups, **options)
    if base.judge is not None and model.judge is not None:
        for dim, (a_scores, b_scores, groups) in judge_pairs(base.judge, model.judge).items():
            out[f"judge_{dim}"] = paired_interval(
                mean_stat(a_scores), mean_stat(b_scores), groups, **options
            )
    return out


def comparison_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """(base, model): every model against the first (M0), then each against its predecessor."""
    pairs = [(labels[0], label) for label in labels[1:]]
    pairs += [(labels[i - 1], labels[i]) for i in range(2, len(labels))]
    return pairs
