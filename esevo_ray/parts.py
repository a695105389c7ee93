"""Resumable Parquet parts: a folder with one part file per finished batch of contexts.

A part is named by a hash of its rows' (dialogue_id, turn_index) keys and written atomically,
so a batch retried after a crash rewrites the same part (never a second copy), and a rerun
into the same folder skips every key already written. Generation (pairs), evaluation
responses (local engines and HTTP endpoints) all write their outputs this way.

Skipping by key is only right while the folder has one producer: the same model, adapter and
decoding settings. `claim` records the producer in `producer.json` when the first part is due
and refuses a resume by another one, so a folder never mixes two models' outputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from esevo_ray import schema
from esevo_ray.errors import UsageError
from esevo_ray.io import atomic_write_text, write_parquet

PART_GLOB = "part-*.parquet"
PRODUCER_FILE = "producer.json"
KEY = ("dialogue_id", "turn_index")


class PartsConflict(ValueError):
    """A parts folder written by another producer than the one asked to resume it."""


def claim(out_dir: str | Path, producer: dict[str, Any]) -> None:
    """Record `producer` (flat: setting -> JSON value) as the writer of `out_dir`'s parts.

    A folder that already records one must have the same value for every setting both name
    (a setting added since is not compared), unless it holds no part yet (a run that failed
    before its first batch: nothing to mix); a folder with parts but no record (written
    before producers were recorded) is taken over as it is.

    Raises:
        PartsConflict: a setting differs; the message names each one, old and new.
    """
    path = Path(out_dir) / PRODUCER_FILE
    producer = _flat(json.loads(json.dumps(producer)))  # as it reads back: tuples are lists
    old = recorded_producer(out_dir)
    changed = [k for k in sorted(old.keys() & producer.keys()) if old[k] != producer[k]]
    if changed and not any(Path(out_dir).glob(PART_GLOB)):
        old, changed = {}, []  # recorded by a run that wrote nothing: this one's instead
    if changed:
        diffs = "; ".join(f"{k}: {old[k]!r:.60} -> {producer[k]!r:.60}" for k in changed[:6])
        raise PartsConflict(
            f"{out_dir} holds parts written with other settings ({diffs}); resuming would mix "
            "two producers' rows: write to a new folder, or move this one away to start over"
        )
    if producer.keys() - old.keys():
        atomic_write_text(path, json.dumps({**old, **producer}, indent=2, sort_keys=True))


def unfinished(out_dir: str | Path) -> bool:
    """Whether `out_dir` is a parts folder whose stage has not finished: it records a
    producer but not yet the manifest.json written last (its parts are the first batches
    only). A folder of Parquet files made otherwise is not one."""
    out_dir = Path(out_dir)
    return (out_dir / PRODUCER_FILE).is_file() and not (out_dir / "manifest.json").is_file()


def recorded_producer(out_dir: str | Path) -> dict[str, Any]:
    """The producer a parts folder records (dotted setting -> value); {} without one.

    Raises:
        PartsConflict: the record is not a JSON object, naming it.
    """
    path = Path(out_dir) / PRODUCER_FILE
    if not path.is_file():
        return {}
    try:
        producer = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        producer = None
    if not isinstance(producer, dict):
        raise PartsConflict(
            f"{path} is not a JSON object of settings: the folder's producer is unknown; "
            "restore it, or move the folder away to start over"
        )
    return producer


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys, so a difference names the one setting that changed."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def part_name(rows: list[dict]) -> str:
    """The file name of the part holding `rows`: a hash of their keys, in any order."""
    keys = sorted(f"{r['dialogue_id']}\x00{r['turn_index']}" for r in rows)
    return f"part-{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:20]}.parquet"


def keys(table: pa.Table) -> pa.Array:
    """One string per row: dialogue_id and turn_index joined."""
    return pc.binary_join_element_wise(
        table["dialogue_id"], pc.cast(table["turn_index"], pa.string()), "\x00"
    )


def read_parts(out_dir: str | Path, sch: pa.Schema) -> pa.Table:
    """All rows written so far into `out_dir` (an empty table if none)."""
    parts = sorted(Path(out_dir).glob(PART_GLOB))
    if not parts:
        return sch.empty_table()
    return pa.concat_tables([schema.read_table(p, sch) for p in parts])


def write_part(out_dir: str | Path, rows: list[dict], sch: pa.Schema) -> Path:
    """Write `rows` as the part of their keys, conformed to `sch`."""
    table = pa.Table.from_pylist(rows, schema=sch)
    return write_parquet(schema.conform(table, sch), Path(out_dir) / part_name(rows))


def todo(contexts: pa.Table, out_dir: str | Path, sch: pa.Schema) -> pa.Table:
    """The rows of `contexts` whose key `out_dir`'s parts do not hold yet (the resume filter).

    Raises:
        UsageError: `contexts` holds a key twice (found only after all was generated, and
            again on every rerun).
        PartsConflict: the parts hold keys `contexts` lacks: they were written for another
            contexts file (or a longer cut of it), and what reads the folder would take them.
    """
    asked = keys(contexts)
    counts = pc.value_counts(asked)
    if len(repeated := counts.field("values").filter(pc.greater(counts.field("counts"), 1))):
        raise UsageError(
            f"the contexts hold {len(repeated)} (dialogue_id, turn_index) keys more than once "
            f"(e.g. {_shown(repeated)}): each context must have its own key"
        )
    written = keys(read_parts(out_dir, sch))
    if not len(written):
        return contexts
    extra = pc.unique(written.filter(pc.invert(pc.is_in(written, value_set=asked))))
    if len(extra):
        raise PartsConflict(
            f"{out_dir} holds rows of {len(extra)} contexts not asked for now "
            f"(e.g. {_shown(extra)}): it was written for other contexts; write to a new "
            "folder, or move this one away to start over"
        )
    return contexts.filter(pc.invert(pc.is_in(asked, value_set=written)))


def check_complete(table: pa.Table, contexts: pa.Table, where: Path) -> None:
    """`table` holds the key of every row of `contexts` exactly once, and no other key."""
    got, asked = keys(table), keys(contexts)
    counts = pc.value_counts(got)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        raise RuntimeError(f"{where}: {len(repeated)} keys written twice (e.g. {_shown(repeated)})")
    extra = got.filter(pc.invert(pc.is_in(got, value_set=asked)))
    if len(extra):
        raise RuntimeError(f"{where}: {len(extra)} rows of contexts not asked for "
                           f"(e.g. {_shown(extra)})")  # fmt: skip
    if table.num_rows < contexts.num_rows:
        raise RuntimeError(f"{where}: {table.num_rows} of {contexts.num_rows} rows written")


def _shown(keys_: pa.Array, n: int = 3) -> str:
    """A few keys as dialogue_id/turn_index, for an error message."""
    return ", ".join(k.replace("\x00", "/") for k in keys_.slice(0, n).to_pylist())
