"""Prompt ablation (Table 3) on the tiny model and the {HM, P} pair transform (Table 5)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from esevo_ray import cli, prompts
from esevo_ray.config import load_config
from esevo_ray.evaluation.ablation import (
    HUMAN_REFERENCE,
    ablation_table,
    extract_reflection_texts,
    human_reference_pairs,
    reflection_text,
)
from esevo_ray.generation.pairs import request_seed
from esevo_ray.generation.pipeline import Responder
from esevo_ray.io import write_parquet
from esevo_ray.parts import claim
from esevo_ray.schema import CONTEXTS, EVAL_RESPONSES, PAIRS, read_table
from tests.evaluation.conftest import write_config, write_contexts
from tests.evaluation.helpers import pairs_table, responses_table


def test_reflection_text_reads_the_text_field_or_falls_back():
    assert reflection_text('{"strategy": "Question", "text": " How are you? "}') == "How are you?"
    assert reflection_text("{'strategy': 'Others', 'text': 'I hear you.'}") == "I hear you."
    assert reflection_text('Sure!\n```json\n{"Text": "Tell me more."}\n```') == "Tell me more."
    for answer in ('{"strategy": "Question"}', '{"text": ""}', "I hear you.", "", '{"text": 3}'):
        assert reflection_text(answer) is None
    raw = responses_table("self_reflection", ['{"text": "ok then"}', "plain answer", '{"x": 1}'])
    table, fallbacks = extract_reflection_texts(raw)
    assert fallbacks == 2
    assert table.column("response").to_pylist() == ["ok then", "plain answer", '{"x": 1}']
    assert table.drop_columns("response").equals(raw.drop_columns("response"))


def test_responder_uses_the_given_system_prompt(tiny_model, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", tmp_path / "runs", tiny_model)).generation
    rows = read_table(write_contexts(tmp_path / "ctx.parquet", 2), CONTEXTS).to_pylist()
    actor = Responder(
        cfg, str(tiny_model), None, "float32", str(tmp_path / "out"),
        model_name="vanilla", system_prompt=prompts.VANILLA_PROMPT,
    )  # fmt: skip
    out, _ = actor.produce(rows)
    seeds = [request_seed(0, r["dialogue_id"], r["turn_index"], 0, "eval", 0) for r in rows]

    def direct(system: str) -> list[str]:
        convs = [prompts.task_messages(r["context"], system) for r in rows]
        return [c.text.strip() for c in actor.engine.chat(convs, cfg.decoding, seeds)]

    assert [o["response"] for o in out] == direct(prompts.VANILLA_PROMPT)
    assert [o["response"] for o in out] != direct(prompts.TASK_PROMPT)
    assert {o["model"] for o in out} == {"vanilla"}


def test_prompt_ablation_on_tiny_model(ray_local, tiny_model, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "runs", tiny_model)
    contexts = write_contexts(tmp_path / "ctx.parquet", 2)
    out = tmp_path / "ablation"
    argv = ["ablate", "prompts", "--config", str(config), "--contexts", str(contexts)]
    assert cli.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["prompts"]) == ["vanilla", "strategy", "self_reflection"]
    answers = {}
    for name in summary["prompts"]:
        table = read_table(out / name / "responses.parquet", EVAL_RESPONSES)
        assert table.num_rows == 2 and set(table.column("model").to_pylist()) == {name}
        answers[name] = table.sort_by("dialogue_id").column("response").to_pylist()
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["scores"] == summary["prompts"][name]["scores"]
        assert "bertscore" not in metrics["scores"]
    # A random model emits no JSON: every self-reflection answer falls back to the raw text.
    raw = read_table(out / "self_reflection" / "raw" / "responses.parquet", EVAL_RESPONSES)
    assert summary["prompts"]["self_reflection"]["fallbacks"] == 2
    assert raw.sort_by("dialogue_id").column("response").to_pylist() == answers["self_reflection"]
    assert answers["vanilla"] != answers["strategy"]  # the prompt reaches the model

    table = (out / "table.md").read_text()
    assert table in printed
    assert "| Model | BLEU-2 | BLEU-3 | ROUGE-L | Distinct-3 |" in table
    for label in ("Vanilla", "w/ strategy guidelines", "w/ self-reflection"):
        assert f"| {label} | " in table
    assert "2 of 2 answers held no JSON object" in table

    assert cli.main([*argv, "--prompts", "vanilla,cot"]) == 2
    assert "--prompts: unknown ['cot']" in capsys.readouterr().err


@pytest.fixture
def sr_pairs(tmp_path):
    table = pairs_table(
        1,
        ["refined one", "golden", "refined three"],
        ["rejected one", "rejected two", "rejected three"],
        ["refined", "golden_parse_failure", "refined"],
    )
    golden = table.column("golden").to_pylist()
    golden[2] = "  "  # no human reference for this context
    table = table.set_column(table.schema.get_field_index("golden"), "golden", pa.array(golden))
    chosen = table.column("chosen").to_pylist()
    chosen[1] = [{"role": "assistant", "content": golden[1]}]  # a golden fallback
    table = table.set_column(
        table.schema.get_field_index("chosen"), "chosen", pa.array(chosen, table["chosen"].type)
    )
    folder = tmp_path / "m1" / "pairs"
    write_parquet(table, folder / "part-a.parquet")
    claim(folder, {"stage": "Generator"})
    (folder / "manifest.json").write_text("{}")
    return folder, table


def test_human_reference_pairs_replace_only_the_chosen_side(sr_pairs, tmp_path, capsys):
    src, table = sr_pairs
    out = tmp_path / "ablation" / "hm_pairs"
    assert cli.main(["ablate", "pairs", "--pairs", str(src), "--out", str(out)]) == 0
    hm = read_table(out, PAIRS)
    assert hm.num_rows == 2
    source = table.slice(0, 2)
    assert hm.column("chosen").to_pylist() == [
        [{"role": "assistant", "content": g}] for g in source.column("golden").to_pylist()
    ]
    assert set(hm.column("chosen_source").to_pylist()) == {HUMAN_REFERENCE}
    same = [c for c in PAIRS.names if c not in ("chosen", "chosen_source")]
    assert hm.select(same).equals(source.select(same))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 2 and manifest["dropped_empty_golden"] == 1
    assert manifest["chosen_already_golden"] == 1
    assert manifest["source_chosen_source"] == {"refined": 2, "golden_parse_failure": 1}
    assert read_table(src, PAIRS).equals(table)  # the source is untouched

    for bad in (src, src / "hm", src.parent):
        with pytest.raises(ValueError, match="must not be, contain or lie inside"):
            human_reference_pairs(src, bad)
    assert read_table(src, PAIRS).equals(table)
    # Written again over itself, yes; over a folder (or file) of something else, never.
    assert cli.main(["ablate", "pairs", "--pairs", str(src), "--out", str(out)]) == 0
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "sub" / "todo.md").write_text("keep me")
    (tmp_path / "a.txt").write_text("keep me too")
    for other in (notes, tmp_path / "a.txt"):
        assert cli.main(["ablate", "pairs", "--pairs", str(src), "--out", str(other)]) == 2
        assert "is not a {HM, P} pairs folder" in capsys.readouterr().err
    assert cli.main(["ablate", "pairs", "--pairs", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "--pairs " in capsys.readouterr().err
    assert (notes / "sub" / "todo.md").read_text() == "keep me"
    assert (tmp_path / "a.txt").read_text() == "keep me too"


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("source", "extes", r"pairs with source \['extes'\]; only ESConv's golden"),
        ("iteration", 2, r"pairs with iteration \[2\]; a later iteration's rejected"),
        (None, None, r"unfinished pairs \(no manifest.json\)"),
    ],
)
def test_human_reference_pairs_come_from_first_iteration_esconv_pairs(
    sr_pairs, tmp_path, column, value, message
):
    """ExTES's golden responses are GPT-4's: labelled human_reference, they made an {HL, P}
    arm read as {HM, P}; an unfinished folder gave fewer pairs with no word."""
    src, table = sr_pairs
    if column is None:
        (src / "manifest.json").unlink()
    else:
        values = [value] * table.num_rows
        table = table.set_column(
            table.schema.get_field_index(column), column, pa.array(values, table[column].type)
        )
        write_parquet(table, src / "part-a.parquet")
    with pytest.raises(ValueError, match=message):
        human_reference_pairs(src, tmp_path / "hm")
    assert not (tmp_path / "hm").exists()


def test_ablation_table_relative_change_and_cli(tmp_path, capsys):
    scores = {
        "M0": {"scores": {"bleu_2": 10.0, "bleu_3": 5.0, "rouge_l": 8.0, "distinct_2": 50.0}},
        "M1 {HM,P}": {"scores": {"bleu_2": 12.0, "bleu_3": 4.0, "rouge_l": 8.0}},
    }
    table = ablation_table(scores, ("bleu_2", "bleu_3", "distinct_2"), relative=True)
    assert table.splitlines() == [
        "| Model | BLEU-2 | BLEU-3 | Distinct-2 |",
        "|---|---|---|---|",
        "| M0 | 10.00 | 5.00 | 50.00 |",
        "| M1 {HM,P} | 12.00 (+20.00%) | 4.00 (-20.00%) | – |",
    ]
    for label, metrics in scores.items():
        folder = tmp_path / label.split()[0]
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(metrics))
    argv = ["ablate", "table", f"M0={tmp_path / 'M0'}", f"M1={tmp_path / 'M1'}", "--relative"]
    assert cli.main([*argv, "--out", str(tmp_path / "t.md")]) == 0
    assert (
        "| M1 | 12.00 (+20.00%) | 4.00 (-20.00%) | 8.00 (+0.00%) | – |" in capsys.readouterr().out
    )
    assert cli.main(["ablate", "table", f"M2={tmp_path / 'none'}"]) == 2
    assert "want LABEL=EVAL_DIR with a metrics.json" in capsys.readouterr().err
    # A folder as --out, and metrics.json files of other shapes: one line each, exit 2.
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    assert "is a folder: name the Markdown file" in capsys.readouterr().err
    for bad, says in (('{"scores": ', "is not JSON"), ("[1]", "is not a metrics.json"),
                      ('{"scores": "abc"}', "is not a metrics.json")):  # fmt: skip
        (tmp_path / "M1" / "metrics.json").write_text(bad)
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and "Traceback" not in err and "\n" not in err
