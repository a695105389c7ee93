import json
import re

import pytest

from esevo_ray.data import (
    DataError,
    context_rows,
    load_alpaca,
    load_esconv,
    load_extes,
    load_serveforemo,
)
from esevo_ray.data.dialogue import SEEKER, SUPPORTER, Dialogue, Turn, normalise

from ..conftest import ASSETS


def roles(turns):
    return [t.role for t in turns]


def test_normalise_merges_runs_and_trims_to_seeker_first_supporter_last():
    turns = [
        Turn(SUPPORTER, "Hello", "Others"),
        Turn(SEEKER, "hi"),
        Turn(SEEKER, "I am sad"),
        Turn(SUPPORTER, "Why?", "Question"),
        Turn(SUPPORTER, "Tell me.", None),
        Turn(SUPPORTER, "It is hard.", "Reflection of feelings"),
        Turn(SUPPORTER, "What happened?", "Question"),
        Turn(SEEKER, "bye"),
    ]
    out = normalise(turns)
    assert roles(out) == [SEEKER, SUPPORTER]
    assert out[0].text == "hi I am sad"
    assert out[1].text == "Why? Tell me. It is hard. What happened?"
    assert out[1].strategy == "Question + Reflection of feelings"  # every part's, once


def test_greeting_filter_reads_a_turn_as_one_exchange():
    turns = []
    for i in range(5):
        turns += [Turn(SEEKER, f"q{i}"), Turn(SUPPORTER, f"r{i}", "Question")]
    d = Dialogue("d1", "esconv", turns)
    # The first exchange (q0 r0) and the last two (q3 r3, q4 r4) give no target.
    rows = context_rows(d, drop_greetings=True)
    assert [r["golden"] for r in rows] == ["r1", "r2"]
    assert rows[0]["turn_index"] == 3
    assert rows[0]["context"] == [
        {"role": "user", "content": "q0"},
        {"role": "assistant", "content": "r0"},
        {"role": "user", "content": "q1"},
    ]
    # Filtered replies stay as context of later targets.
    assert rows[1]["context"][-1] == {"role": "user", "content": "q2"}
    every = ["r0", "r1", "r2", "r3", "r4"]
    assert [r["golden"] for r in context_rows(d)] == every
    assert [r["golden"] for r in context_rows(d, drop_greetings=False)] == every
    only_last = context_rows(d, drop_greetings=True, greetings=(0, 1))
    assert [r["golden"] for r in only_last] == ["r0", "r1", "r2", "r3"]
    # Dialogues of three exchanges or fewer give no preference target.
    short = Dialogue("d2", "esconv", turns[:6])
    assert context_rows(short, drop_greetings=True) == []
    with pytest.raises(ValueError, match="must be >= 0"):
        context_rows(d, drop_greetings=True, greetings=(-1, 2))


def test_esconv_split_files_load(data_root):
    loaded = load_esconv(data_root / "esconv" / "test.json", "test")
    assert len(loaded.items) == 195 and loaded.skipped == 0
    first = loaded.items[0]
    assert first.emotion_type == "depression" and first.turns[0].role == SUPPORTER
    assert first.turns[0].strategy == "Others" and first.turns[1].strategy is None


def test_esconv_original_layout_loads_both_role_spellings():
    loaded = load_esconv(ASSETS / "esconv_original_sample.json", "train")
    a, b = loaded.items
    assert roles(a.turns) == [SEEKER, SUPPORTER, SEEKER, SUPPORTER]
    assert a.turns[0].text == "Hi, I am worried about my job."  # newline normalised
    assert a.turns[1].strategy == "Question"
    assert roles(normalise(b.turns)) == [SEEKER, SUPPORTER]


def test_extes_loader_handles_nested_response_and_runs():
    loaded = load_extes(ASSETS / "extes_sample.json")
    d = loaded.items[0]
    assert d.source == "extes" and d.problem_type == "Communication Challenges"
    assert d.turns[5].text == "Feeling accused unfairly hurts."
    assert d.turns[5].strategy == "Emotional Validation"
    assert d.turns[0].strategy is None  # "" on greetings becomes no label
    n = normalise(d.turns)
    assert n[0].text == "I keep fighting with my roommate. It is about chores, again."
    assert n[0].role == SEEKER and n[-1].role == SUPPORTER


def test_serveforemo_counsellor_strategy_labels_next_supporter_turn():
    d = load_serveforemo(ASSETS / "serveforemo_sample.json").items[0]
    assert d.dialogue_id == "sfe-1" and d.emotion_type == "sadness"
    assert roles(d.turns) == [SEEKER, SUPPORTER, SEEKER, SUPPORTER, SEEKER, SUPPORTER]
    assert d.turns[1].strategy == "Reflection of feelings"
    assert d.turns[3].strategy == "Question"


def _write_lines(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")


GOOD = {
    "situation": "s",
    "dialog": [
        {"speaker": "usr", "text": "hi"},
        {"speaker": "sys", "text": "hello", "strategy": "Others"},
    ],
}


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"dialog": [', "record 2: not valid JSON"),
        ({"dialog": []}, "record 2: field 'dialog' must be a non-empty list"),
        ({"dialog": [GOOD["dialog"][0], "hello"]}, "record 2: dialog[1] must be an object"),
        ({"dialog": [{"speaker": "bot", "text": "x"}]}, "dialog[0].speaker is 'bot'"),
        ({"dialog": [{"text": "x"}]}, "dialog[0].speaker is missing, want one of"),
        ({"dialog": [{"speaker": "usr", "text": "  "}]}, "dialog[0].text"),
        ({"situation": 3, "dialog": GOOD["dialog"]}, "field 'situation' must be a string"),
        ([1, 2], "expected an object"),
        # Wrong types once surfaced as AttributeError/TypeError/ArrowTypeError, unnamed.
        ({"dialog": [{"speaker": ["usr"], "text": "x"}]}, "dialog[0].speaker is ['usr']"),
        (
            {"dialog": [{"speaker": "sys", "text": "x", "strategy": ["Question"]}]},
            "field 'dialog[0].strategy' must be a string",
        ),
        (
            {"dialog": [{"speaker": "sys", "content": "x", "annotation": "Question"}]},
            "field 'dialog[0].annotation' must be an object",
        ),
    ],
)
def test_malformed_esconv_records_name_file_record_and_field(tmp_path, bad, message):
    path = tmp_path / "train.json"
    _write_lines(path, [GOOD, bad, GOOD])
    with pytest.raises(DataError) as e:
        load_esconv(path, "train")
    assert str(path) in str(e.value) and message in str(e.value)
    skipped = load_esconv(path, "train", on_bad="skip")
    assert len(skipped.items) == 2 and skipped.skipped == 1
    assert message in skipped.problems[0]


def test_malformed_extes_and_serveforemo(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([{"content": [{"Bot": "hi"}]}]))
    with pytest.raises(DataError, match=r"record 0: content\[0\] has neither 'User' nor 'AI'"):
        load_extes(tmp_path / "x.json")
    (tmp_path / "s.json").write_text(
        json.dumps([{"dialogue": [{"role": "Therapist", "content": "hi"}]}])
    )
    with pytest.raises(DataError, match=r"dialogue\[0\].role is 'Therapist'"):
        load_serveforemo(tmp_path / "s.json")
    (tmp_path / "y.json").write_text(json.dumps([{"content": [{"AI": "hi", "AI Strategy": 3}]}]))
    with pytest.raises(DataError, match=r"record 0: field 'content\[0\].AI Strategy' must be"):
        load_extes(tmp_path / "y.json")
    (tmp_path / "t.json").write_text(
        json.dumps([{"dialogue": [{"role": "Supporter", "content": "hi", "strategy": {"a": 1}}]}])
    )
    with pytest.raises(DataError, match=r"field 'dialogue\[0\].strategy' must be a string"):
        load_serveforemo(tmp_path / "t.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_extes(tmp_path / "broken.json")
    (tmp_path / "latin.json").write_bytes('[{"content": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.json: not UTF-8 text \(byte 17"):
        load_extes(tmp_path / "latin.json")


def test_alpaca_loads_and_rejects_missing_fields(data_root, tmp_path):
    loaded = load_alpaca(data_root / "alpaca" / "alpaca_data.json")
    assert len(loaded.items) == 52002
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "x", "output": "y"}]))
    with pytest.raises(DataError, match="field 'input' must be a string"):
        load_alpaca(tmp_path / "a.json")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ExTES file not found"):
        load_extes(tmp_path / "nope.json")


def test_json_lines_split_at_newlines_only_and_a_byte_order_mark_is_read(data_root, tmp_path):
    """U+2028 and U+0085 may stand unescaped in a JSON string (json.dumps(ensure_ascii=False)
    writes them), and editors save UTF-8 with a BOM: neither loses or shifts a record."""
    records = [json.loads(line) for line in (data_root / "esconv" / "train.json").open()][:3]
    records[0]["dialog"][0]["text"] = "first line\u2028second\u0085third"
    (tmp_path / "lines.json").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8"
    )
    loaded = load_esconv(tmp_path / "lines.json", "train", "skip")
    assert (len(loaded.items), loaded.skipped) == (3, 0)
    assert loaded.items[0].turns[0].text.startswith("first line")
    extes = json.loads((ASSETS / "extes_sample.json").read_text())
    (tmp_path / "bom.json").write_text(json.dumps(extes, indent=2), encoding="utf-8-sig")
    assert len(load_extes(tmp_path / "bom.json").items) == len(extes)


def test_a_dialogue_without_either_role_is_a_bad_record(tmp_path):
    """A one-role record loaded as a dialogue of no rows: it took a place among those
    data.max_*_dialogues keep, and nothing said so."""
    seeker_only = {"dialog": [{"speaker": "usr", "text": "hi"}, {"speaker": "usr", "text": "so"}]}
    path = tmp_path / "train.json"
    _write_lines(path, [GOOD, seeker_only, GOOD])
    with pytest.raises(DataError, match=r"record 2: the dialogue has no supporter turn"):
        load_esconv(path, "train")
    skipped = load_esconv(path, "train", on_bad="skip")
    assert len(skipped.items) == 2 and skipped.skipped == 1
    answered_before_asked = {"dialog": [{"speaker": "sys", "text": "hello"},
                                        {"speaker": "usr", "text": "bye"}]}  # fmt: skip
    _write_lines(path, [GOOD, answered_before_asked])
    with pytest.raises(DataError, match=r"record 2: .* no seeker turn that a supporter turn"):
        load_esconv(path, "train")
    (tmp_path / "x.json").write_text(json.dumps([{"content": [{"AI": "hello"}]}]))
    with pytest.raises(DataError, match=r"record 0: the dialogue has no seeker turn"):
        load_extes(tmp_path / "x.json")
    counsel = [{"dialogue": [{"role": "Seeker", "content": "hi"},
                             {"role": "Strategy Counselor", "content": "ask"}]}]  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps(counsel))
    with pytest.raises(DataError, match=r"record 0: the dialogue has no supporter turn"):
        load_serveforemo(tmp_path / "s.json")


def test_an_extes_item_with_both_speakers_is_two_turns_in_turn_taking_order(tmp_path):
    """Items of ExTES.json holding both "User" and "AI" stopped preparing the paper configs
    (or, skipped, dropped whole dialogues); each is two turns, the expected speaker first."""
    content = [
        {"User": "I lost my job."},
        {"AI": "That sounds hard.", "AI Strategy": "Emotional Validation", "User": "It is."},
        {"User": "Okay.", "AI": "Let us look at options.", "AI Strategy": "Suggest Options"},
    ]
    (tmp_path / "x.json").write_text(json.dumps([{"scene": "Job", "content": content}]))
    turns = load_extes(tmp_path / "x.json").items[0].turns
    assert [(t.role, t.text, t.strategy) for t in turns] == [
        ("seeker", "I lost my job.", None),
        ("supporter", "That sounds hard.", "Emotional Validation"),
        ("seeker", "It is.", None),
        ("supporter", "Let us look at options.", "Suggest Options"),
        ("seeker", "Okay.", None),
    ]
    nested = [{"content": [{"User": "hi"}, {"AI": {"Text": "hello"}}]}]
    (tmp_path / "n.json").write_text(json.dumps(nested))
    with pytest.raises(DataError, match=r"record 0: content\[1\].AI is an object without "
                       r"'Response' \(keys \['Text'\]\)"):  # fmt: skip
        load_extes(tmp_path / "n.json")


def test_half_a_surrogate_pair_is_a_bad_record_not_a_crash_when_writing(tmp_path):
    """JSON may hold "\\ud83d" alone (an emoji cut in two); Parquet cannot store it, and
    preparing stopped with a UnicodeEncodeError naming no file, record or field."""
    records = [
        {"content": [{"User": "hi"}, {"AI": "hello"}]},
        {"content": [{"User": "cut \ud83d here"}, {"AI": "hello"}]},
    ]
    (tmp_path / "x.json").write_text(json.dumps(records))  # ensure_ascii keeps it as \ud83d
    with pytest.raises(DataError, match=r"x.json: record 1: field 'content\[0\].User' holds an "
                       r"unpaired surrogate '\\ud83d' at character 4"):  # fmt: skip
        load_extes(tmp_path / "x.json")
    skipped = load_extes(tmp_path / "x.json", on_bad="skip")
    assert (len(skipped.items), skipped.skipped) == (1, 1)
    # ... nor in a label, a description or an id, which reach Parquet too.
    for where, record in (
        ("content[1].AI Strategy", {"content": [{"User": "hi"}, {"AI": "ok", "AI Strategy": "R\ud83d"}]}),
        ("description", {"description": "lost \ud83d", "content": [{"User": "hi"}, {"AI": "ok"}]}),
        ("id", {"id": "x\ud83d", "content": [{"User": "hi"}, {"AI": "ok"}]}),
    ):  # fmt: skip
        (tmp_path / "y.json").write_text(json.dumps([record]))
        with pytest.raises(DataError, match=rf"field '{re.escape(where)}' holds an unpaired"):
            load_extes(tmp_path / "y.json")
    alpaca = [{"instruction": "q", "input": "", "output": "a \udc80"}]
    (tmp_path / "a.json").write_text(json.dumps(alpaca))
    with pytest.raises(DataError, match=r"record 0: field 'output' holds an unpaired surrogate"):
        load_alpaca(tmp_path / "a.json")
