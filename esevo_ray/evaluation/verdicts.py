"""A judge's verdict: one score in [1, 5] and its explanation, parsed from a model's reply.

Shared by the endpoint judge (`judge.py`) and the local-engine judge (`local_judge.py`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

SCORE_RANGE = (1.0, 5.0)


class VerdictError(ValueError):
    """A judge reply that holds no valid JSON verdict."""


@dataclass(frozen=True)
class Verdict:
    score: float | None
    explanation: str | None
    attempts: int
    error: str | None = None


# A reasoning model's draft, when the endpoint returns it inside the content.
_THINKING = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)


def parse_verdict(text: str | None) -> tuple[float, str | None]:
    """The (score, explanation) in a judge reply: its last JSON object with a valid score,
    possibly in a code fence, outside any <think> block (a draft, an example of the format
    or a scale quoted before the verdict do not count). Failing that, the last such object
    read leniently (single quotes as in the paper's templates, a trailing comma), and then
    the "Score: N" line that Appendix E.2's output format asks for, when every such line
    in the reply gives the same score.

    Raises:
        VerdictError: no score in [1, 5] found.
    """
    if not text:
        raise VerdictError("empty reply")
    text = _THINKING.sub(" ", text)
    try:
        return _json_verdict(text)
    except VerdictError as e:
        if found := _lenient_verdict(text):
            return found
        lines = {float(m.group(1)) for m in _SCORE_LINE.finditer(text)}
        if len(lines) == 1 and SCORE_RANGE[0] <= (score := lines.pop()) <= SCORE_RANGE[1]:
            explanation = _EXPLANATION_LINE.search(text)
            return score, explanation.group(1).strip() if explanation else None
        raise e


# "Score: 4", "**Score**: 4/5", "score - 4.5" (a number right after the word, nothing else).
_SCORE_LINE = re.compile(r"(?im)^[\s*#_]*score\W{0,5}?(\d+(?:\.\d+)?)(?:\s*/\s*5)?\W*$")
_EXPLANATION_LINE = re.compile(
    r"(?ims)^[\s*#_]*explanation[\s*_]*:[\s*_]*(.+?)(?=^[\s*#_]*score|\Z)"
)


def _lenient_verdict(text: str) -> tuple[float, str | None] | None:
    from esevo_ray.generation.parsing import lenient_objects

    verdicts = [v for v in map(_verdict_in, lenient_objects(text)) if v is not None]
    return verdicts[-1] if verdicts else None


def _fields(obj: dict) -> dict:
    """A verdict object's fields, their keys read whatever their case."""
    return {str(k).strip().lower(): v for k, v in obj.items()}


def _verdict_in(obj: dict) -> tuple[float, str | None] | None:
    """(score, explanation) of a verdict object; None when its score is no number in
    SCORE_RANGE (`parsing.as_score`: 4, "4", "4/5")."""
    from esevo_ray.generation.parsing import as_score

    fields = _fields(obj)
    if (score := as_score(fields.get("score"))) is None:
        return None
    explanation = fields.get("explanation")
    return score, None if explanation is None else str(explanation)


def _json_verdict(text: str) -> tuple[float, str | None]:
    """The last JSON object of `text` with a valid score (parse_verdict)."""
    decoder = json.JSONDecoder(strict=False)  # control characters inside strings are harmless
    found, invalid, inside = None, None, 0
    for match in re.finditer(r"\{", text):
        if match.start() < inside:  # a nested object of a verdict: its own score is not one
            continue
        try:
            obj, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        if (verdict := _verdict_in(obj)) is None:
            if "score" in (fields := _fields(obj)):
                invalid = f"score {fields['score']!r} is not a number in {SCORE_RANGE}"
            continue
        found, inside = verdict, end
    if found is not None:
        return found
    raise VerdictError(invalid or f"no JSON object with a score in reply {text[:80]!r}")
