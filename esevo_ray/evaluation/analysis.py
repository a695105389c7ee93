"""Analyses of responses and preference pairs: formulaic phrases, relevance, similarity, length.

Definitions:

- Text normalisation for phrase matching: lowercase, curly apostrophes made straight, runs of
  whitespace collapsed, and "i am" written "i'm", so "I am sorry to hear" counts as
  "i'm sorry to hear". A phrase matches where its words occur in a row in the response's
  words (runs of letters, digits, apostrophes), punctuation between them aside: "Oh, I see"
  holds "oh i see", as does, rarely, "so? Oh. I see" across sentences.
- Openers: the first three of those words.
- Relevance of a response to the user's statements: by default the cosine of MiniLM sentence
  embeddings (mean pooling, unit norm) between the response and the user's last turn;
  "overlap" is the Jaccard index of the two word sets instead.
- Chosen-rejected similarity: the same measure between the chosen and the rejected text.
- Lengths: whitespace words per response.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import pyarrow as pa

from esevo_ray.evaluation.backbones import (
    Backbone,
    cosine_rows,
    resolve_backbone,
    sentence_encoder,
)
from esevo_ray.schema import CHOSEN_SOURCES

FORMULAIC_PHRASES = ("it sounds like", "i'm sorry to hear")
Method = Literal["embedding", "overlap"]
_WORD = re.compile(r"[a-z0-9']+")


def normalise(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\bi am\b", "i'm", text)


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether the words of `phrase` occur in a row in `text`, punctuation aside: the openers
    are made of `words` ("Oh, I see" opens with "oh i see"), so they are matched the same way."""
    needle = re.escape(" ".join(words(phrase)))
    return re.search(rf"(?<![\w']){needle}(?![\w'])", " ".join(words(text))) is not None


def top_openers(texts: Sequence[str], n_words: int = 3, k: int = 5) -> list[tuple[str, int]]:
    """The `k` most frequent first-`n_words` openers with their counts."""
    counts = Counter(" ".join(w[:n_words]) for w in map(words, texts) if len(w) >= n_words)
    return counts.most_common(k)


def phrase_shares(
    responses: dict[str, Sequence[str]], phrases: Sequence[str]
) -> dict[str, dict[str, float]]:
    """model -> phrase -> percentage of that model's responses containing the phrase."""
    return {
        model: {
            p: 100.0 * sum(contains_phrase(t, p) for t in texts) / max(len(texts), 1)
            for p in phrases
        }
        for model, texts in responses.items()
    }


def formulaic_report(responses: dict[str, Sequence[str]], k: int = 5) -> dict:
    """Shares of the paper's formulaic phrases and of the `k` most frequent openers, per model."""
    pooled = [t for texts in responses.values() for t in texts]
    phrases = list(FORMULAIC_PHRASES)
    for opener, _ in top_openers(pooled, k=len(pooled)):
        if len(phrases) == len(FORMULAIC_PHRASES) + k:
            break
        # Skip an opener that is part of a listed phrase, e.g. "i'm sorry to".
        if not any(opener in p or p in opener for p in phrases):
            phrases.append(opener)
    return {
        "phrases": phrases,
        "shares": phrase_shares(responses, phrases),
        "openers": {m: top_openers(t, k=k) for m, t in responses.items()},
    }


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    """Whitespace-word length of responses: n, mean, median, p90 (nearest rank), min, max."""
    lengths = sorted(len(t.split()) for t in texts)
    if not lengths:
        return {"n": 0}
    p90 = lengths[math.ceil(0.9 * len(lengths)) - 1]
    return {
        "n": len(lengths),
        "mean": statistics.fmean(lengths),
        "median": statistics.median(lengths),
        "p90": p90,
        "min": lengths[0],
        "max": lengths[-1],
    }


def user_statements(messages: Sequence[dict], last_k: int = 1) -> str:
    """The user's last `last_k` turns of a chat context, joined by newlines."""
    turns = [m["content"] for m in messages if m["role"] == "user"]
    return "\n".join(turns[-last_k:]) if turns else ""


def similarity(
    a: Sequence[str],
    b: Sequence[str],
    method: Method = "embedding",
    backbone: Backbone | None = None,
) -> list[float]:
    """Pairwise similarity of a[i] and b[i]: embedding cosine or word-set Jaccard."""
    if len(a) != len(b):
        raise ValueError(f"similarity: {len(a)} texts against {len(b)}")
    if method == "overlap":
        out = []
        for x, y in zip(a, b, strict=True):
            wx, wy = set(words(x)), set(words(y))
            out.append(len(wx & wy) / len(wx | wy) if wx | wy else 0.0)
        return out
    if method != "embedding":
        raise ValueError(f"similarity method must be 'embedding' or 'overlap', got {method!r}")
    if not a:
        return []
    encoder = sentence_encoder(backbone or resolve_backbone())
    return cosine_rows(encoder.encode(list(a)), encoder.encode(list(b))).tolist()


def distribution(values: Sequence[float]) -> dict[str, float]:
    """n, mean, median, stdev of a list of scores."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def last_content(messages: Sequence[dict]) -> str:
    return messages[-1]["content"] if messages else ""


def fallback_rates(pairs: pa.Table) -> dict[str, float]:
    """Percentage of pairs per chosen_source (refined, or a golden fallback)."""
    sources = Counter(pairs.column("chosen_source").to_pylist())
    total = max(pairs.num_rows, 1)
    names = list(dict.fromkeys([*CHOSEN_SOURCES, *sorted(map(str, sources))]))
    return {s: 100.0 * sources.get(s, 0) / total for s in names}


def pairs_analysis(
    pairs: pa.Table, method: Method = "embedding", backbone: Backbone | None = None
) -> dict:
    """Relevance of chosen vs rejected to the user's last turn, their similarity, fallbacks.

    Returns:
        n, relevance_chosen, relevance_rejected and similarity (one value per pair), and
        fallback_rates (percent per chosen_source).
    """
    user = [user_statements(p) for p in pairs.column("prompt").to_pylist()]
    chosen = [last_content(m) for m in pairs.column("chosen").to_pylist()]
    rejected = [last_content(m) for m in pairs.column("rejected").to_pylist()]
    return {
        "n": pairs.num_rows,
        "relevance_chosen": similarity(user, chosen, method, backbone),
        "relevance_rejected": similarity(user, rejected, method, backbone),
        "similarity": similarity(chosen, rejected, method, backbone),
        "fallback_rates": fallback_rates(pairs),
    }


def responses_analysis(
    table: pa.Table, method: Method = "embedding", backbone: Backbone | None = None
) -> dict:
    """Lengths and relevance to the user's last turn of one model's EVAL_RESPONSES table."""
    texts = [t or "" for t in table.column("response").to_pylist()]
    user = [user_statements(c) for c in table.column("context").to_pylist()]
    return {"length": length_stats(texts), "relevance": similarity(user, texts, method, backbone)}
