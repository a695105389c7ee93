"""Parse the JSON a model emits for reflection and refinement, the way small models emit it.

Handles markdown fences, single-quoted keys (as in the paper's own template), trailing or
leading prose, Python literals, trailing commas and nested quotes. The first balanced `{...}`
object that holds the answer's key is read, so text after it (or a second object smuggled in
by a user message quoted in the answer) cannot change the result; braces in prose before it
("{thinking}", "{}") are passed over.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from esevo_ray.prompts import REFLECTION_KEYS


class ParseError(ValueError):
    """The model's answer holds no usable JSON object; the message says why."""


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _quote_opens(text: str, i: int) -> bool:
    """Whether the quote at `i` opens a string: an apostrophe inside a word ("I'm") does not."""
    return text[i] == '"' or i == 0 or not text[i - 1].isalnum()


_ENDS_VALUE = re.compile(r"\s*[,:}\]]")


def _quote_closes(text: str, i: int, quote: str) -> bool:
    """Whether the character at `i` closes a string opened by `quote`: a single quote only
    where a value ends after it (`,`, `:`, `}` or `]`); elsewhere it is an apostrophe ("It's",
    "the users' feelings")."""
    return text[i] == quote and (quote == '"' or _ENDS_VALUE.match(text, i + 1) is not None)


def _braces(text: str, start: int = 0) -> Iterator[tuple[int, int]]:
    """(index, depth after it) of each brace from `start` on that is outside any string.
    Strings are followed only inside braces: prose between objects is not read for quotes."""
    depth, quote, escaped = 0, None, False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif _quote_closes(text, i, quote):
                quote = None
        elif depth and ch in "\"'" and _quote_opens(text, i):
            quote = ch
        elif ch == "{":
            depth += 1
            yield i, depth
        elif ch == "}" and depth:
            depth -= 1
            yield i, depth


def _balanced_objects(text: str) -> Iterator[str]:
    """Each balanced {...} span that is not part of an earlier one, in order.

    A candidate starts at a brace outside any string, followed from the first brace on, so
    an object quoted inside an answer, even a cut-off or malformed one, is never a candidate
    of its own.
    """
    last = -1
    for start, _ in _braces(text):
        if text[start] != "{" or start <= last:  # a closing brace, or inside the last object
            continue
        end = next((i for i, depth in _braces(text, start) if depth == 0), None)
        if end is not None:
            yield text[start : end + 1]
            last = end


def _requote(text: str) -> str:
    """`text` with its single-quoted strings double-quoted, for json; an apostrophe inside
    one stays (`_quote_closes`), which Python's own literal syntax cannot tell apart."""
    out, quote, i = [], None, 0
    while i < len(text):
        ch = text[i]
        if quote is None:
            if ch in "\"'" and _quote_opens(text, i):
                quote = ch
                ch = '"'
        elif ch == "\\" and i + 1 < len(text):
            escaped = text[i + 1]
            out.append("'" if escaped == "'" else ch + escaped)  # \' is no JSON escape
            i += 2
            continue
        elif _quote_closes(text, i, quote):
            quote = None
            ch = '"'
        elif ch == '"':  # a double quote inside a single-quoted string
            ch = '\\"'
        out.append(ch)
        i += 1
    return "".join(out)


def _load(candidate: str) -> Any:
    for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            return json.loads(attempt, strict=False)  # raw control characters in strings
        except json.JSONDecodeError:
            pass
        try:
            # Single-quoted keys and values, True/None: a Python literal, evaluated safely.
            return ast.literal_eval(attempt)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
        try:  # single-quoted strings holding apostrophes, as the paper's template invites
            return json.loads(_requote(attempt), strict=False)
        except json.JSONDecodeError:
            pass
    raise ParseError(f"not a JSON object: {candidate[:80]!r}")


def lenient_objects(text: str) -> Iterator[dict]:
    """Each balanced {...} object of `text` that reads as a mapping the lenient way (`_load`:
    JSON, a trailing comma, a Python literal, single quotes around apostrophes), in order."""
    for candidate in _balanced_objects(text):
        try:
            value = _load(candidate)
        except ParseError:
            continue
        if isinstance(value, dict):
            yield value


def extract_object(text: str, holds: Callable[[dict], bool] = bool) -> dict[str, Any]:
    """The first JSON-like object in `text` (inside a fence if there is one) that `holds`
    accepts (by default: any non-empty one).

    Raises:
        ParseError: no such object; the message says what the first candidate lacked.
    """
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty answer")
    sources = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    first_error: ParseError | None = None
    for source in sources:
        for candidate in _balanced_objects(source):
            try:
                value = _load(candidate)
            except ParseError as e:
                first_error = first_error or e
                continue
            if isinstance(value, dict) and holds(value):
                return value
            first_error = first_error or ParseError(f"no usable answer in {candidate[:80]!r}")
    raise first_error or ParseError("no {...} object in the answer")


# The prompt's answer template writes each value as <what goes here>: echoed back, it is
# no answer.
_PLACEHOLDER = re.compile(r"\s*<[^<>]*>\s*")
_SCORE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*5)?\s*")  # "4", "4.5", "4/5"


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return "" if _PLACEHOLDER.fullmatch(value) else value.strip()
    return json.dumps(value, ensure_ascii=False)


def as_score(value: Any) -> float | None:
    """A 1-5 score: a number, or text such as "4", "4.5" or "4/5"; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        score = float(value)
    else:
        match = _SCORE.fullmatch(str(value))
        if not match:
            return None
        score = float(match.group(1))
    return score if 1 <= score <= 5 else None


def _lower_keys(d: dict) -> dict:
    return {str(k).strip().lower().replace(" ", "_"): v for k, v in d.items()}


def _reflection(obj: dict) -> dict[str, str]:
    """The four user-understanding fields of an answer, flat or under "understanding"."""
    obj = _lower_keys(obj)
    inner = obj.get("understanding")
    if isinstance(inner, dict):
        obj = {**obj, **_lower_keys(inner)}
    return {key: _as_text(obj.get(key)) for key in REFLECTION_KEYS}


def _answers_refinement(obj: dict) -> bool:
    """Whether `obj` gives a refined response: not the template echoed back before the answer
    (its placeholder) nor one without the key."""
    value = _lower_keys(obj).get("refined_response")
    return value is not None and not (isinstance(value, str) and not _as_text(value))


# A "refined response" that is the speaker's label and quotes around the reply, as the
# prompt shows each turn (supporter: "..."), stands for the reply.
_LABELLED = re.compile(r"""(?is)\s*(?:supporter|assistant)\s*:\s*(.*)""")
_QUOTED = re.compile(r"""(?s)\s*(["'\u201c])(.*)(["'\u201d])\s*""")


# JSON or template residue a small model writes as its reply ("{#Refining Response}",
# "{[]} None [None]", "[The reFinishs] No way!"): braces or square brackets, and under three
# words outside them (2 of ESConv's 15,654 supporter turns hold a bracket at all).
_BRACKET = re.compile(r"[{}\[\]]")
_BRACKETED = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_WORD = re.compile(r"[^\W\d_]+")


def _is_markup(reply: str) -> bool:
    if not _BRACKET.search(reply):
        return False
    prose = reply
    while (less := _BRACKETED.sub(" ", prose)) != prose:  # innermost first: {[..]} too
        prose = less
    return len(_WORD.findall(prose)) < 3


def _unwrapped(reply: str) -> str:
    if match := _LABELLED.fullmatch(reply):
        reply = match.group(1)
    match = _QUOTED.fullmatch(reply)
    pair = match and {match.group(1), match.group(3)}
    if pair in ({'"'}, {"'"}, {"\u201c", "\u201d"}) and not pair & set(match.group(2)):
        reply = match.group(2)  # one quoted reply, not two quotes with words between
    return reply.strip()


def parse_reflection(text: str) -> dict[str, str]:
    """The four user-understanding fields; any may be empty but one must be given (an
    answer template echoed before the answer gives none)."""
    return _reflection(extract_object(text, lambda obj: any(_reflection(obj).values())))


def parse_refinement(text: str, max_chars: int | None = None) -> dict[str, Any]:
    """Reflection fields, evaluation_score, feedback and the refined response.

    `max_chars`: the cap guided decoding put on `refined_response`; a response that reaches
    it was cut there (mid-sentence) and is no answer.

    Raises:
        ParseError: no object, or no `refined_response` text (an object, a list, a number or
            the template's placeholder is none), one cut at `max_chars`, or markup (braces or
            square brackets, and under three words outside them).
    """
    obj = _lower_keys(extract_object(text, _answers_refinement))
    value = obj.get("refined_response")
    if value is not None and not isinstance(value, str):
        raise ParseError(f"'refined_response' is a {type(value).__name__}, not text")
    if max_chars is not None and value is not None and len(value) >= max_chars:
        raise ParseError(f"'refined_response' was cut at its {max_chars}-character cap")
    refined = _unwrapped(_as_text(value))
    if not refined:
        raise ParseError("no 'refined_response' text")
    if _is_markup(refined):
        raise ParseError(f"'refined_response' is markup, not a reply: {refined[:60]!r}")
    return {
        **_reflection(obj),
        "evaluation_score": as_score(obj.get("evaluation_score")),
        "feedback": _as_text(obj.get("feedback")),
        "refined_response": refined,
    }
