"""Disjoint seed parts, one per iteration (App. B.1)."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from esevo_ray import schema
from esevo_ray.data.seeds import part_of_rows, seed_part, write_seed_part
from esevo_ray.io import write_parquet


def contexts(counts: list[int]) -> pa.Table:
    """A seed table: dialogue i holds counts[i] contexts, dialogues in file order."""
    rows = [
        {"dialogue_id": f"d{i}", "source": "esconv", "split": "train", "turn_index": 2 * j + 1,
         "context": [{"role": "user", "content": "hi"}], "golden": "ok"}
        for i, n in enumerate(counts)
        for j in range(n)
    ]  # fmt: skip
    return schema.conform(pa.Table.from_pylist(rows, schema=schema.CONTEXTS), schema.CONTEXTS)


def dialogues(table: pa.Table) -> set[str]:
    return set(table.column("dialogue_id").to_pylist())


def test_parts_are_disjoint_whole_dialogues_that_cover_the_seeds():
    table = contexts([3, 2, 4, 1, 3, 3])  # 16 contexts
    first, second = seed_part(table, 1, 2), seed_part(table, 2, 2)
    assert not dialogues(first) & dialogues(second)
    assert first.num_rows + second.num_rows == table.num_rows
    # A dialogue goes where its middle context falls: d0-d2 hold 9, the rest 7.
    assert dialogues(first) == {"d0", "d1", "d2"} and first.num_rows == 9
    assert seed_part(table, 1, 1).equals(table)


def test_no_part_is_empty_even_when_one_dialogue_is_large():
    table = contexts([1, 10, 1, 1])
    # d1's middle falls in the second third; d2 and d3 in the last.
    assert part_of_rows(table, 3) == [0] + [1] * 10 + [2, 2]
    assert part_of_rows(contexts([5, 1, 1]), 3) == [0] * 5 + [1, 2]
    rng = random.Random(0)
    for _ in range(200):
        counts = [rng.randint(1, 9) for _ in range(rng.randint(1, 12))]
        t = rng.randint(1, len(counts))
        parts = part_of_rows(contexts(counts), t)
        assert parts == sorted(parts) and set(parts) == set(range(t)), (counts, t)


def test_bad_splits_fail_naming_the_numbers(tmp_path):
    table = contexts([2, 2])
    with pytest.raises(ValueError, match="2 seed dialogues cannot fill 3 disjoint parts"):
        seed_part(table, 1, 3)
    with pytest.raises(ValueError, match=r"iteration must be in 1..2, got 3"):
        seed_part(table, 3, 2)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        part_of_rows(table, 0)


def test_write_seed_part_reads_and_writes_contexts_parquet(tmp_path):
    source = write_parquet(contexts([2, 1, 2, 2]), tmp_path / "seed_contexts.parquet")
    out = write_seed_part(source, tmp_path / "m2" / "seed_contexts.parquet", 2, 2)
    part = schema.read_table(out, schema.CONTEXTS)
    assert dialogues(part) == {"d2", "d3"} and part.num_rows == 4
