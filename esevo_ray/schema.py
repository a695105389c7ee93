"""Column names and Arrow schemas of every Parquet artifact, defined once.

Every writer calls `conform(table, SCHEMA)` before writing; every reader calls
`read_table(path, SCHEMA)`, so a file from another version fails loudly, not later.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

# Chat messages in the OpenAI / TRL conversational layout.
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

# A dialogue turn after normalisation: role is "seeker" or "supporter".
TURN = pa.struct([("role", pa.string()), ("text", pa.string()), ("strategy", pa.string())])

DIALOGUES = pa.schema(
    [
        ("dialogue_id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("situation", pa.string()),
        ("emotion_type", pa.string()),
        ("problem_type", pa.string()),
        ("turns", pa.list_(TURN)),
    ]
)

# Turn-level examples: the context C_n (seeker = "user", supporter = "assistant") and the
# golden supporter response at `turn_index` (its index in the normalised turns).
CONTEXTS = pa.schema(
    [
        ("dialogue_id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("turn_index", pa.int32()),
        ("context", MESSAGES),
        ("golden", pa.string()),
        ("strategy", pa.string()),
        ("situation", pa.string()),
        ("emotion_type", pa.string()),
        ("problem_type", pa.string()),
    ]
)

# Supervised rows in TRL's prompt-completion conversational layout (loss on completion only).
SFT_ROWS = pa.schema(
    [
        ("example_id", pa.string()),
        ("source", pa.string()),
        ("prompt", MESSAGES),
        ("completion", MESSAGES),
    ]
)

CHOSEN_SOURCES = (
    "refined", "golden_parse_failure", "golden_length_rule", "golden_unchanged",
    "golden_empty_rejected",
)  # fmt: skip

# Preference pairs in TRL's conversational preference layout, plus lineage.
PAIRS = pa.schema(
    [
        ("dialogue_id", pa.string()),
        ("turn_index", pa.int32()),
        ("iteration", pa.int32()),
        ("source", pa.string()),
        ("prompt", MESSAGES),
        ("chosen", MESSAGES),
        ("rejected", MESSAGES),
        ("golden", pa.string()),
        ("chosen_source", pa.string()),
        ("generator_model", pa.string()),
        ("adapter_hash", pa.string()),
        ("user_profile", pa.string()),
        ("user_emotion", pa.string()),
        ("user_personality", pa.string()),
        ("user_intention", pa.string()),
        ("evaluation_score", pa.float32()),
        ("feedback", pa.string()),
        ("attempts", pa.int32()),
        ("prompt_tokens", pa.int32()),
        ("rejected_tokens", pa.int32()),
        ("reflection_tokens", pa.int32()),
        ("generation_seconds", pa.float32()),
    ]
)

PAIR_KEY = ("dialogue_id", "turn_index", "iteration")


class SchemaError(ValueError):
    """A table or file whose columns do not match the expected schema."""


def conform(table: pa.Table, schema: pa.Schema, *, where: str = "table") -> pa.Table:
    """Select the schema's columns in order and cast them; fail on any missing column.

    Raises:
        SchemaError: a column is missing or cannot be cast; the message names it.
    """
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise SchemaError(f"{where}: missing columns {missing} (has {table.column_names})")
    columns = []
    for field in schema:
        got = table.schema.field(field.name).type
        if absent := _absent_fields(got, field.type, field.name):
            # A cast would fill them with nulls: {role, text} read as {role, content: None}.
            raise SchemaError(f"{where}: column {field.name!r} is {got}, without {absent}")
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SchemaError(
                f"{where}: column {field.name!r} is {got}, want {field.type}: {e}"
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def _absent_fields(got: pa.DataType, want: pa.DataType, where: str) -> list[str]:
    """The struct fields of `want` (at any depth of lists and structs) that `got` lacks."""
    if pa.types.is_struct(want) and pa.types.is_struct(got):
        names = {got.field(i).name: got.field(i).type for i in range(got.num_fields)}
        absent = []
        for i in range(want.num_fields):
            sub = want.field(i)
            if sub.name not in names:
                absent.append(f"{where}.{sub.name}")
            else:
                absent += _absent_fields(names[sub.name], sub.type, f"{where}.{sub.name}")
        return absent
    lists = (pa.types.is_list, pa.types.is_large_list)
    if any(t(want) for t in lists) and any(t(got) for t in lists):
        return _absent_fields(got.value_type, want.value_type, f"{where}[]")
    return []


def parquet_files(path: str | Path) -> list[Path]:
    """The files `read_table` reads at `path`: the file itself, or every *.parquet file below
    a folder, in name order, but not hidden ones (a write in progress)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted(
        f
        for f in path.rglob("*.parquet")
        if not any(p.startswith((".", "_")) for p in f.relative_to(path).parts)
    )


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    """Read a Parquet file or folder of files and check it against `schema`.

    Raises:
        FileNotFoundError: nothing there, or a folder without Parquet files.
        SchemaError: a file that is not Parquet, lacks a column of `schema` (each file of a
            folder is checked: the dataset would read another file's as nulls) or cannot
            be read (corrupt pages); the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Parquet data at {path}")
    if path.is_dir():
        # A part that is not Parquet (truncated, say) is an error, never silently left out.
        files = [str(f) for f in parquet_files(path)]
        if not files:
            raise FileNotFoundError(f"no Parquet files in {path}")
    else:
        files = [str(path)]
    for f in files:
        _check_parquet(f, schema)
    try:
        table = ds.dataset(files, format="parquet").to_table()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as e:
        # A file whose column is of another type than the first file's (a list for a string)
        first = pq.read_schema(files[0])
        odd = [f for f in files[1:] if any(
            pq.read_schema(f).field(n).type != first.field(n).type for n in schema.names
        )]  # fmt: skip
        which = f"; {', '.join(odd[:3])} hold other column types than {files[0]}" if odd else ""
        raise SchemaError(f"{path}: unreadable Parquet{which} ({e})") from None
    return conform(table, schema, where=str(path))


def _check_parquet(path: str | Path, schema: pa.Schema) -> None:
    """Raise SchemaError unless `path` has a readable Parquet footer and `schema`'s columns,
    with every struct field: a folder's files are read as the first one's schema, and a
    later file's message {role, text} came back as {role, content: None}."""
    try:
        found = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise SchemaError(f"{path}: not a Parquet file ({e})") from None
    if missing := [name for name in schema.names if name not in found.names]:
        raise SchemaError(f"{path}: missing columns {missing} (has {found.names})")
    for field in schema:
        got = found.field(field.name).type
        if absent := _absent_fields(got, field.type, field.name):
            raise SchemaError(f"{path}: column {field.name!r} is {got}, without {absent}")


# chosen_source of a {HM, P} pair (Table 5): the chosen response is the human reference.
HUMAN_REFERENCE = "human_reference"

# One model's responses on the evaluation contexts (the eval folder's responses.parquet).
EVAL_RESPONSES = pa.schema(
    [
        ("dialogue_id", pa.string()),
        ("turn_index", pa.int32()),
        ("model", pa.string()),
        ("context", MESSAGES),
        ("golden", pa.string()),
        ("response", pa.string()),
    ]
)

# LLM-as-a-judge verdicts, one row per (response, dimension); score is null when missing.
JUDGE_SCORES = pa.schema(
    [
        ("dialogue_id", pa.string()),
        ("turn_index", pa.int32()),
        ("model", pa.string()),
        ("dimension", pa.string()),
        ("score", pa.float32()),
        ("explanation", pa.string()),
        ("attempts", pa.int32()),
        ("error", pa.string()),
        ("judge_model", pa.string()),
    ]
)
