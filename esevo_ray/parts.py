"""Resumable Parquet parts: a folder with one part file per finished batch of contexts.

A part is named by a hash of its rows' (dialogue_id, turn_index) keys and written atomically,
so a batch retried after a crash rewrites the same part (never a second copy), and a rerun
into the same folder skips every key already written. Generation (pairs), evaluation
responses (local engines and HTTP endpoints) all write their outputs this way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from esevo_ray import schema
from esevo_ray.io import write_parquet

PART_GLOB = "part-*.parquet"
KEY = ("dialogue_id", "turn_index")


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


def unwritten(contexts: pa.Table, written: pa.Table) -> pa.Table:
    """The rows of `contexts` whose key is not in `written` (the resume filter)."""
    if not written.num_rows:
        return contexts
    return contexts.filter(pc.invert(pc.is_in(keys(contexts), value_set=keys(written))))


def check_complete(table: pa.Table, expected: int, where: Path) -> None:
    """Every key exactly once, none missing."""
    unique = len(pc.unique(keys(table)))
    if unique != table.num_rows:
        raise RuntimeError(f"{where}: {table.num_rows - unique} duplicate keys")
    if table.num_rows < expected:
        raise RuntimeError(f"{where}: {table.num_rows} of {expected} rows written")
