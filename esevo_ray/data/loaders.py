"""Readers for ESConv (both layouts), ExTES, ServeForEmo and Alpaca.

Each reader turns one file into `Dialogue`s (or instruction dicts) and reports a bad record
with the file, the record number and the field at fault. With `on_bad="skip"` the record
is skipped and counted in `Loaded.skipped` instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from esevo_ray.data.dialogue import SEEKER, SUPPORTER, DataError, Dialogue, Turn, normalise
from esevo_ray.storage import job_copy_hint

OnBad = Literal["error", "skip"]

ESCONV_ROLES = {
    "usr": SEEKER, "seeker": SEEKER, "speaker": SEEKER,
    "sys": SUPPORTER, "supporter": SUPPORTER, "listener": SUPPORTER,
}  # fmt: skip

# ServeForEmo has no public release; its loader maps these fields onto the dialogue model.
# Layout: a JSON array (or JSON lines) of sessions
#   {"id": str, "scenario": str, "situation": str, "emotion": str,
#    "dialogue": [{"role": "Seeker" | "Supporter" | "Strategy Counselor",
#                  "content": str, "strategy": str | null}, ...]}
# Strategy Counselor turns are not utterances: their `strategy` labels the next supporter turn.
SERVEFOREMO_FIELDS = {
    "id": "id",
    "problem_type": "scenario",
    "situation": "situation",
    "emotion_type": "emotion",
    "turns": "dialogue",
    "role": "role",
    "text": "content",
    "strategy": "strategy",
}
SERVEFOREMO_ROLES = {"seeker": SEEKER, "supporter": SUPPORTER, "strategy counselor": None}


@dataclass
class Loaded:
    """Records read from one file, and how many bad ones were skipped (with why)."""

    items: list = field(default_factory=list)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (record number, JSON value) from a JSON array or a JSON-lines file.

    Record numbers are 1-based line numbers for JSON lines and 0-based indices for arrays.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not JSON
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    head = text.lstrip()[:1]
    if head == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON at line {e.lineno}: {e.msg}") from None
        yield from enumerate(data)
        return
    # Lines end at "\n" only: str.splitlines() also splits at U+2028 and U+0085, which JSON
    # strings may hold unescaped.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, DataError(f"not valid JSON: {e.msg} (column {e.colno})")


def _load(path: str | Path, parse: Callable[[Any, str], Any], on_bad: OnBad, label: str) -> Loaded:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{label} file not found: {path}{job_copy_hint(path)}")
    out = Loaded()
    for n, record in _records(path):
        where = f"{path}: record {n}"
        try:
            if isinstance(record, DataError):
                raise record
            if not isinstance(record, dict):
                raise DataError(f"expected an object, got {type(record).__name__}")
            item = parse(record, f"{path.stem}-{n}")
            if isinstance(item, Dialogue):
                _check_roles(item)
            out.items.append(item)
        except DataError as e:
            if on_bad == "error":
                raise DataError(f"{where}: {e}") from None
            out.skipped += 1
            out.problems.append(f"{where}: {e}")
    return out


def _check_roles(dialogue: Dialogue) -> None:
    """A dialogue needs a seeker turn answered by a supporter turn (one exchange once
    `normalise` trims it): without one it gives no rows, and loaded, it still took a place
    among the dialogues that data.max_*_dialogues keep."""
    roles = {turn.role for turn in dialogue.turns}
    if missing := [role for role in (SEEKER, SUPPORTER) if role not in roles]:
        raise DataError(f"the dialogue has no {missing[0]} turn")
    if not normalise(dialogue.turns):  # every supporter turn before every seeker turn
        raise DataError("the dialogue has no seeker turn that a supporter turn answers")


def _text(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"field {field_name!r} must be a non-empty string, got {value!r}")
    _utf8(value, field_name)
    return " ".join(value.split())


def _utf8(value: str, field_name: str) -> None:
    """JSON lets a string hold half a surrogate pair ("\\ud83d", an emoji cut in two), which
    Parquet, being UTF-8, cannot store: caught here, with its record, not when writing."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"field {field_name!r} holds an unpaired surrogate {value[e.start]!r} at "
            f"character {e.start}"
        ) from None


def _optional_str(record: dict, key: str) -> str:
    value = record.get(key) or ""
    if not isinstance(value, str):
        raise DataError(f"field {key!r} must be a string, got {type(value).__name__}")
    _utf8(value, key)
    return value


def _record_id(record: dict, keys: tuple[str, ...], default: str) -> str:
    """The record's own id (the first of `keys` it has), else `default`."""
    key = next((k for k in keys if record.get(k)), None)
    value = str(record[key]) if key else default
    _utf8(value, key or "id")
    return value


def _label(value: Any, field_name: str) -> str | None:
    """An optional label (a strategy): None when absent or empty, else a string."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(f"field {field_name!r} must be a string, got {value!r:.60}")
    _utf8(value, field_name)
    return value


def _turn_items(record: dict, key: str) -> list[dict]:
    """`record[key]`: the dialogue's turns, a non-empty list of objects."""
    items = record.get(key)
    if not isinstance(items, list) or not items:
        raise DataError(f"field {key!r} must be a non-empty list, got {items!r:.60}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{key}[{i}] must be an object, got {item!r:.60}")
    return items


def _found(item: dict, key: str) -> str:
    """How a record's field reads in an error: "is missing", or "is <value>"."""
    return f"is {item[key]!r:.60}" if key in item else "is missing"


def _esconv_record(record: dict, default_id: str, source: str, split: str) -> Dialogue:
    turns = []
    for i, utt in enumerate(_turn_items(record, "dialog")):
        speaker = utt.get("speaker")
        if not isinstance(speaker, str) or speaker not in ESCONV_ROLES:
            raise DataError(
                f"dialog[{i}].speaker {_found(utt, 'speaker')}, want one of {list(ESCONV_ROLES)}"
            )
        # HF split files carry `text`/`strategy`; the original ESConv.json `content`/`annotation`.
        key = "text" if "text" in utt else "content"
        text = _text(utt.get(key), f"dialog[{i}].{key}")
        annotation = utt.get("annotation") or {}
        if not isinstance(annotation, dict):
            raise DataError(
                f"field 'dialog[{i}].annotation' must be an object, got {annotation!r:.60}"
            )
        strategy = _label(utt.get("strategy"), f"dialog[{i}].strategy") or _label(
            annotation.get("strategy"), f"dialog[{i}].annotation.strategy"
        )
        role = ESCONV_ROLES[speaker]
        turns.append(Turn(role, text, strategy if role == SUPPORTER else None))
    return Dialogue(
        dialogue_id=_record_id(record, ("id", "dialogue_id"), default_id),
        source=source,
        turns=turns,
        split=split,
        situation=_optional_str(record, "situation"),
        emotion_type=_optional_str(record, "emotion_type"),
        problem_type=_optional_str(record, "problem_type"),
    )


def load_esconv(path: str | Path, split: str, on_bad: OnBad = "error") -> Loaded:
    """ESConv: the Hugging Face JSON-lines splits or the original `ESConv.json` array."""
    return _load(path, lambda r, i: _esconv_record(r, i, "esconv", split), on_bad, "ESConv")


def _extes_record(record: dict, default_id: str) -> Dialogue:
    turns: list[Turn] = []
    for i, item in enumerate(_turn_items(record, "content")):
        if "User" not in item and "AI" not in item:
            raise DataError(f"content[{i}] has neither 'User' nor 'AI' (keys {list(item)})")
        seeker = Turn(SEEKER, _text(item["User"], f"content[{i}].User")) if "User" in item else None
        supporter = _extes_supporter(item, i) if "AI" in item else None
        # Some items of ExTES.json hold both: the speaker the dialogue's turn-taking expects
        # comes first (the seeker, unless the last turn was the seeker's).
        if seeker and supporter and turns and turns[-1].role == SEEKER:
            seeker, supporter = supporter, seeker
        turns += [turn for turn in (seeker, supporter) if turn]
    return Dialogue(
        dialogue_id=_record_id(record, ("id",), default_id),
        source="extes",
        turns=turns,
        split="seed",
        situation=_optional_str(record, "description"),
        problem_type=_optional_str(record, "scene"),
    )


def _extes_supporter(item: dict, i: int) -> Turn:
    value = item["AI"]
    if isinstance(value, dict):  # some copies nest the text under "Response"
        if "Response" not in value:
            raise DataError(f"content[{i}].AI is an object without 'Response' (keys {list(value)})")
        value = value["Response"]
    strategy = _label(item.get("AI Strategy"), f"content[{i}].AI Strategy")
    return Turn(SUPPORTER, _text(value, f"content[{i}].AI"), strategy)


def load_extes(path: str | Path, on_bad: OnBad = "error") -> Loaded:
    """ExTES: `{scene, description, content: [{"User": ..} | {"AI": .., "AI Strategy": ..}]}`."""
    return _load(path, _extes_record, on_bad, "ExTES")


def _serveforemo_record(record: dict, default_id: str) -> Dialogue:
    f = SERVEFOREMO_FIELDS
    turns, pending = [], None
    for i, item in enumerate(_turn_items(record, f["turns"])):
        raw_role = str(item.get(f["role"], "")).strip().lower()
        if raw_role not in SERVEFOREMO_ROLES:
            raise DataError(
                f"{f['turns']}[{i}].{f['role']} {_found(item, f['role'])}, "
                f"want one of {list(SERVEFOREMO_ROLES)}"
            )
        role = SERVEFOREMO_ROLES[raw_role]
        label = _label(item.get(f["strategy"]), f"{f['turns']}[{i}].{f['strategy']}")
        if role is None:
            pending = label or pending
            continue
        text = _text(item.get(f["text"]), f"{f['turns']}[{i}].{f['text']}")
        strategy = (label or pending) if role == SUPPORTER else None
        pending = None if role == SUPPORTER else pending
        turns.append(Turn(role, text, strategy))
    return Dialogue(
        dialogue_id=_record_id(record, (f["id"],), default_id),
        source="serveforemo",
        turns=turns,
        split="seed",
        situation=_optional_str(record, f["situation"]),
        emotion_type=_optional_str(record, f["emotion_type"]),
        problem_type=_optional_str(record, f["problem_type"]),
    )


def load_serveforemo(path: str | Path, on_bad: OnBad = "error") -> Loaded:
    """ServeForEmo through `SERVEFOREMO_FIELDS` (see its comment for the layout)."""
    return _load(path, _serveforemo_record, on_bad, "ServeForEmo")


def _alpaca_record(record: dict, default_id: str) -> dict:
    for key in ("instruction", "input", "output"):
        if not isinstance(record.get(key), str):
            raise DataError(f"field {key!r} must be a string, got {record.get(key)!r:.60}")
    if not record["instruction"].strip():
        raise DataError("field 'instruction' must not be empty")
    for key in ("instruction", "input", "output"):
        _utf8(record[key], key)
    return {"example_id": default_id, **{k: record[k] for k in ("instruction", "input", "output")}}


def load_alpaca(path: str | Path, on_bad: OnBad = "error") -> Loaded:
    """Alpaca: a JSON array of `{instruction, input, output}`."""
    return _load(path, _alpaca_record, on_bad, "Alpaca")
