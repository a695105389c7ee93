"""Disjoint seed parts, one per iteration (App. B.1)."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from esevo_ray import schema
from esevo_ray.data.seeds import part_of_rows, sample_contexts, seed_part, write_seed_part
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


def keys(table: pa.Table) -> list[tuple[str, int]]:
    ids, turns = table.column("dialogue_id").to_pylist(), table.column("turn_index").to_pylist()
    return list(zip(ids, turns, strict=True))


def test_each_iteration_draws_its_own_contexts_from_every_dialogue():
    """generation.max_contexts took the first rows: every iteration answered the same
    contexts, from the first few of the seed dialogues."""
    table = contexts([8] * 20)  # 160 contexts of 20 dialogues
    first, second = (sample_contexts(table, 16, 42, t) for t in (1, 2))
    assert first.num_rows == second.num_rows == 16
    assert keys(first) != keys(second)  # 16 of 160 twice alike: 1 in 4e21
    assert len(dialogues(first)) > 2  # the first 16 rows hold 2 dialogues
    assert set(keys(first)) <= set(keys(table))
    assert keys(first) == sorted(keys(first), key=keys(table).index)  # in the file's order
    # The same draw again (a resumed stage, the other arm of an ablation) ...
    assert sample_contexts(table, 16, 42, 1).equals(first)
    assert not sample_contexts(table, 16, 7, 1).equals(first)  # ... and data.seed decides it
    # A larger number keeps every context of a smaller: its folder is extended.
    assert set(keys(first)) <= set(keys(sample_contexts(table, 40, 42, 1)))
    for n in (None, 160, 500):
        assert sample_contexts(table, n, 42, 1).equals(table)
