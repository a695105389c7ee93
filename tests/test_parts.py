"""Resumable parts folders: what a resume skips, and what a finished folder must hold."""

from __future__ import annotations

import pyarrow as pa
import pytest

from esevo_ray.parts import PartsConflict, check_complete, todo, write_part

SCHEMA = pa.schema(
    [("dialogue_id", pa.string()), ("turn_index", pa.int64()), ("text", pa.string())]
)


def _rows(*keys: tuple[str, int]) -> list[dict]:
    return [{"dialogue_id": d, "turn_index": t, "text": f"{d}{t}"} for d, t in keys]


def _table(*keys: tuple[str, int]) -> pa.Table:
    return pa.Table.from_pylist(_rows(*keys), schema=SCHEMA)


def test_todo_skips_written_keys_and_refuses_keys_not_asked_for(tmp_path):
    contexts = _table(("a", 1), ("a", 3), ("b", 1))
    assert todo(contexts, tmp_path, SCHEMA).num_rows == 3
    write_part(tmp_path, _rows(("a", 3)), SCHEMA)
    left = todo(contexts, tmp_path, SCHEMA)
    assert left.select(["dialogue_id", "turn_index"]).to_pylist() == [
        {"dialogue_id": "a", "turn_index": 1}, {"dialogue_id": "b", "turn_index": 1},
    ]  # fmt: skip
    write_part(tmp_path, _rows(("c", 1)), SCHEMA)
    with pytest.raises(
        PartsConflict, match=r"holds rows of 1 contexts not asked for now \(e.g. c/1\)"
    ):
        todo(contexts, tmp_path, SCHEMA)


def test_contexts_with_a_key_twice_are_refused_before_any_work(tmp_path):
    """Found only by check_complete, after everything was generated, and again on every
    rerun: the folder could not be finished."""
    from esevo_ray.errors import UsageError

    with pytest.raises(UsageError, match=r"hold 1 \(dialogue_id, turn_index\) keys more than "
                       r"once \(e.g. a/1\)"):  # fmt: skip
        todo(_table(("a", 1), ("a", 1), ("b", 1)), tmp_path, SCHEMA)


def test_pairs_train_in_key_order_however_generation_batched_them(tmp_path):
    """Part files are read in name order, hashes of each batch's keys: the same pairs
    generated with another batch_size trained in another order."""
    from esevo_ray.config import load_config
    from esevo_ray.schema import PAIRS
    from esevo_ray.training.rows import load_split
    from tests.training.tables import pairs_table

    rows = pairs_table(9).to_pylist()
    section = load_config(None, ["dpo.eval_fraction=0"]).dpo
    order = []
    for size in (1, 3, 4):
        folder = tmp_path / f"batch-{size}"
        for i in range(0, len(rows), size):
            write_part(folder, rows[i : i + size], PAIRS)
        train, _ = load_split(str(folder), PAIRS, ["prompt", "chosen", "rejected"], section)
        order.append([r["chosen"][0]["content"] + r["prompt"][-1]["content"] for r in train])
    assert order[0] == order[1] == order[2]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"'])
def test_a_producer_record_that_is_not_one_is_named(tmp_path, text):
    from esevo_ray.parts import PRODUCER_FILE, claim

    (tmp_path / PRODUCER_FILE).write_text(text)
    with pytest.raises(PartsConflict, match="producer.json is not a JSON object of settings"):
        claim(tmp_path, {"model": "m"})
    assert (tmp_path / PRODUCER_FILE).read_text() == text


def test_check_complete_names_repeated_extra_and_missing_rows(tmp_path):
    contexts = _table(("a", 1), ("b", 1))
    check_complete(_table(("b", 1), ("a", 1)), contexts, tmp_path)
    with pytest.raises(RuntimeError, match=r"1 keys written twice \(e.g. a/1\)"):
        check_complete(_table(("a", 1), ("a", 1), ("b", 1)), contexts, tmp_path)
    with pytest.raises(RuntimeError, match=r"1 rows of contexts not asked for \(e.g. z/4\)"):
        check_complete(_table(("a", 1), ("z", 4)), contexts, tmp_path)
    with pytest.raises(RuntimeError, match="1 of 2 rows written"):
        check_complete(_table(("a", 1)), contexts, tmp_path)


def test_a_run_that_wrote_no_part_does_not_hold_its_folder(tmp_path):
    """A run that failed before its first batch (a context budget too small, say) left its
    record, and the corrected rerun was refused for mixing rows there were none of."""
    from esevo_ray.parts import claim, recorded_producer

    claim(tmp_path, {"model": "m", "generation.max_context_tokens": 256})
    claim(tmp_path, {"model": "m", "generation.max_context_tokens": 768})
    assert recorded_producer(tmp_path)["generation.max_context_tokens"] == 768
    write_part(tmp_path, _rows(("d", 1)), SCHEMA)
    with pytest.raises(PartsConflict, match="generation.max_context_tokens: 768 -> 256"):
        claim(tmp_path, {"model": "m", "generation.max_context_tokens": 256})
