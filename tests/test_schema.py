"""Reading Parquet artifacts: a folder of parts is read whole or not at all."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esevo_ray.schema import SchemaError, read_table

SCHEMA = pa.schema([("a", pa.int64())])


def test_a_folder_reads_its_parts_but_no_hidden_or_other_files(tmp_path):
    for i in range(2):
        pq.write_table(pa.table({"a": [i] * 5}, schema=SCHEMA), tmp_path / f"part-{i}.parquet")
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / ".part-2.parquet.x.tmp").write_bytes(b"half")  # a write in progress
    assert read_table(tmp_path, SCHEMA).num_rows == 10


def test_a_truncated_part_is_an_error_naming_it(tmp_path):
    for i in range(2):
        pq.write_table(pa.table({"a": [i] * 5}, schema=SCHEMA), tmp_path / f"part-{i}.parquet")
    data = (tmp_path / "part-1.parquet").read_bytes()
    (tmp_path / "part-1.parquet").write_bytes(data[: len(data) // 2])
    # It used to be left out, silently: DPO trained on half of the pairs.
    with pytest.raises(SchemaError, match=r"part-1.parquet: not a Parquet file"):
        read_table(tmp_path, SCHEMA)


def test_a_part_without_a_column_is_an_error_naming_it(tmp_path):
    """The dataset takes the first file's columns and reads the others' as nulls."""
    pq.write_table(pa.table({"a": [1, 2]}, schema=SCHEMA), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"b": [3, 4]}), tmp_path / "part-1.parquet")
    with pytest.raises(SchemaError, match=r"part-1.parquet: missing columns \['a'\]"):
        read_table(tmp_path, SCHEMA)


def test_corrupt_pages_under_an_intact_footer_are_a_schema_error(tmp_path):
    path = tmp_path / "part-0.parquet"
    table = pa.table({"a": list(range(5000))}, schema=SCHEMA)
    pq.write_table(table, path, compression="snappy", use_dictionary=False)
    data = bytearray(path.read_bytes())
    for i in range(8, 4000):  # the first data page, past the magic bytes
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(SchemaError, match=r"part-0.parquet: unreadable Parquet"):
        read_table(path, SCHEMA)


def test_a_message_without_its_content_field_is_an_error_not_a_null(tmp_path):
    """A cast fills a struct field the file lacks with nulls: messages {role, text} were read
    as {role, content: None} and went into the chat template so."""
    from esevo_ray.schema import CONTEXTS

    row = {name: None for name in CONTEXTS.names}
    row.update(dialogue_id="d", turn_index=1, context=[{"role": "user", "text": "hi"}])
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "contexts.parquet")
    with pytest.raises(
        SchemaError, match=r"column 'context' is .* without \['context\[\]\.content'\]"
    ):
        read_table(tmp_path / "contexts.parquet", CONTEXTS)


def test_a_later_part_without_a_struct_field_is_an_error_naming_it(tmp_path):
    """A folder is read as its first file's schema: a later part's {role, text} messages
    came back as {role, content: None}, and DPO trained on empty messages."""
    from esevo_ray.schema import CONTEXTS

    def part(i: int, message: dict) -> None:
        row = {name: None for name in CONTEXTS.names}
        row.update(dialogue_id=f"d{i}", turn_index=1, context=[message])
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / f"part-{i}.parquet")

    part(0, {"role": "user", "content": "hi there"})
    part(1, {"role": "user", "text": "hi"})
    with pytest.raises(SchemaError, match=r"part-1.parquet: column 'context' is .* without"):
        read_table(tmp_path, CONTEXTS)


def test_parts_of_other_column_types_are_a_schema_error(tmp_path):
    pq.write_table(pa.table({"a": [1]}, schema=SCHEMA), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"a": [[1, 2]]}), tmp_path / "part-1.parquet")
    with pytest.raises(SchemaError, match=r"part-1.parquet hold other column types than .*part-0"):
        read_table(tmp_path, SCHEMA)
