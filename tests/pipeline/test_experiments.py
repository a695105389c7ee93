"""`esevo ablate pairs-table` (Table 5) and `esevo baselines` (Table 2): the demo config, tiny model."""

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from esevo_ray import prompts
from esevo_ray.cli import main
from esevo_ray.layout import RunLayout
from esevo_ray.models import adapter_hash
from esevo_ray.parts import PART_GLOB, recorded_producer
from esevo_ray.schema import CHOSEN_SOURCES

from ..conftest import REPO

TRAIN = {"per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 1200,
         "eval_fraction": 0.0, "save_steps": 1, "logging_steps": 1, "learning_rate": 1e-3}  # fmt: skip


def _merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied, section by section."""
    out = dict(base)
    for key, value in changes.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merge(base[key], value) if both else value
    return out


def _config(tmp_path: Path, tiny_model: Path, data_root: Path, name: str, iterations: int) -> Path:
    """configs/cpu-demo.yaml at tiny scale: the tiny model, a few dialogues, one step each."""
    demo = yaml.safe_load((REPO / "configs" / "cpu-demo.yaml").read_text())
    cfg = _merge(demo, {
        "name": name,
        "output_dir": str(tmp_path / "runs"),
        "model": {"path": str(tiny_model), "dtype": "float32"},
        "data": {"data_dir": str(data_root), "max_train_dialogues": 2, "max_seed_dialogues": 2,
                 "max_eval_dialogues": 1, "alpaca_samples": 2},
        # Two seed contexts per iteration: 4 in all over T=2.
        "generation": {
            "engine": "hf", "batch_size": 2, "max_contexts": 2, "max_model_len": 2048,
            "max_context_tokens": 1000, "max_attempts": 1, "guided_json": False,
            "decoding": {"max_new_tokens": 8}, "reflection_decoding": {"max_new_tokens": 16},
        },
        "sft": {"max_steps": 1, **TRAIN},
        "dpo": {"max_steps": 1, **TRAIN},
        "evolve": {"iterations": iterations},
        # The demo's local judge is exercised elsewhere; here it would only add minutes.
        "eval": {"max_examples": 3, "judge": {"backend": "endpoint"}},
    })  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _pairs(run: RunLayout, t: int) -> pl.DataFrame:
    return pl.read_parquet(run.pairs(t) / PART_GLOB).with_columns(
        chosen_text=pl.col("chosen").list.first().struct.field("content"),
        rejected_text=pl.col("rejected").list.first().struct.field("content"),
    )


def _row_labels(markdown: str) -> list[str]:
    """First cells of the rows of the first table in `markdown`, header excluded."""
    lines = markdown[markdown.index("\n| ") + 1 :].split("\n\n")[0].splitlines()
    return [line.split("|")[1].strip() for line in lines[2:]]


def _dialogues(path: Path) -> set[str]:
    return set(pl.read_parquet(path)["dialogue_id"])


def _check_base_arm(run: RunLayout, tiny_model: Path) -> None:
    """M0 is the base model; M1 a fresh adapter against it; each iteration its own seed half."""
    stages = json.loads(run.manifest.read_text())["stages"]
    assert "base_m0" in stages and "sft_m0" not in stages
    assert all(s["status"] == "done" for s in stages.values())
    assert run.is_base(0) and not run.adapter(0).exists()
    assert run.models() == {0: None, 1: run.adapter(1), 2: run.adapter(2)}
    m1, m2 = _pairs(run, 1), _pairs(run, 2)
    assert set(m1["adapter_hash"]) == {""} and set(m1["generator_model"]) == {tiny_model.name}
    assert set(m2["adapter_hash"]) == {adapter_hash(run.adapter(1))}
    summary = json.loads((run.adapter(1) / "train_summary.json").read_text())
    assert summary["init_adapter"] is None, "M1 is trained from the base, not from an adapter"

    seeds, part1, part2 = map(_dialogues, (run.seed_contexts, run.seeds(1), run.seeds(2)))
    assert part1 and part2 and not part1 & part2 and part1 | part2 == seeds
    assert set(m1["dialogue_id"]) <= part1 and set(m2["dialogue_id"]) <= part2
    assert m1.height == m2.height == 2


@pytest.mark.slow
def test_pairs_table_runs_both_arms_from_the_base_model(
    tmp_path, tiny_model, data_root, ray_local, capsys
):
    path = _config(tmp_path, tiny_model, data_root, "tiny-t5", iterations=2)
    assert main(["ablate", "pairs-table", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "runs"
    hm, sr = RunLayout(root / "tiny-t5-hm"), RunLayout(root / "tiny-t5-sr")
    for run in (hm, sr):
        _check_base_arm(run, tiny_model)

    hm1, sr1 = (
        _pairs(hm, 1).sort("dialogue_id", "turn_index"),
        _pairs(sr, 1).sort("dialogue_id", "turn_index"),
    )
    for t in (1, 2):
        pairs = _pairs(hm, t)
        assert (pairs["chosen_text"] == pairs["golden"]).all()
        assert set(pairs["chosen_source"]) == {"human_reference"}
        assert (pairs["reflection_tokens"] == 0).all()
        assert set(_pairs(sr, t)["chosen_source"]) <= set(CHOSEN_SOURCES)
    # Same generator, contexts and seeds at iteration 1: the arms differ in the chosen side only.
    assert hm1["rejected_text"].to_list() == sr1["rejected_text"].to_list()
    # M0, the backbone, answers under the paper's vanilla prompt; trained models under P_task.
    assert _eval_prompt(hm, 0) == prompts.VANILLA_PROMPT
    assert _eval_prompt(hm, 1) == _eval_prompt(sr, 2) == prompts.TASK_PROMPT

    table = (root / "tiny-t5" / "ablation" / "pairs_table" / "table.md").read_text()
    assert table in out
    assert _row_labels(table) == ["M0", "**{HM,P}**", "M1", "M2", "**{SR,P}**", "M1", "M2"]
    assert "{HL,P} is not run" in table
    m0 = json.loads((hm.eval(0) / "metrics.json").read_text())["scores"]
    assert f"| M0 | {m0['bleu_2']:.2f} | – | {m0['bleu_3']:.2f} |" in table

    summary = json.loads(
        (root / "tiny-t5" / "ablation" / "pairs_table" / "summary.json").read_text()
    )
    labels = [c["label"] for c in summary["comparisons"]]
    assert labels == ["{HM,P} M1 vs M0", "{HM,P} M2 vs M1", "{SR,P} M1 vs M0", "{SR,P} M2 vs M1"]
    for c in summary["comparisons"]:
        b2 = c["metrics"]["bleu_2"]  # the first 3 test contexts, of one dialogue: no interval
        assert (b2["n"], b2["dialogues"], b2["low"], b2["excludes_zero"]) == (3, 1, None, False)
    hm_m1 = summary["scores"]["{HM,P}"]["M1"]["bleu_2"]
    assert summary["comparisons"][0]["metrics"]["bleu_2"]["model"] == pytest.approx(hm_m1)


@pytest.mark.slow
def test_baselines_table_has_vanilla_sft_esconv_and_the_run(
    tmp_path, tiny_model, data_root, ray_local, capsys
):
    path = _config(tmp_path, tiny_model, data_root, "tiny-t2", iterations=1)
    assert main(["baselines", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "runs"
    vanilla, esconv, run = (
        RunLayout(root / n) for n in ("tiny-t2-vanilla", "tiny-t2-sft-esconv", "tiny-t2")
    )
    assert vanilla.models() == {0: None} and esconv.models() == {0: esconv.adapter(0)}
    assert run.models() == {0: run.adapter(0), 1: run.adapter(1)}
    # SFT-ESConv trains on ESConv alone; the run's M0 also on the Alpaca replay.
    assert "alpaca" not in set(pl.read_parquet(esconv.sft_data)["source"])
    assert "alpaca" in set(pl.read_parquet(run.sft_data)["source"])

    table = (root / "tiny-t2" / "ablation" / "baselines" / "table.md").read_text()
    assert table in out
    assert _row_labels(table) == ["Vanilla", "SFT-ESConv", "M0", "M1"]
    summary = json.loads((root / "tiny-t2" / "ablation" / "baselines" / "summary.json").read_text())
    assert [c["label"] for c in summary["comparisons"]] == [
        "Vanilla vs M0", "SFT-ESConv vs M0", "M1 vs M0",
    ]  # fmt: skip
    assert _eval_prompt(vanilla, 0) == prompts.VANILLA_PROMPT
    assert _eval_prompt(esconv, 0) == _eval_prompt(run, 0) == prompts.TASK_PROMPT
    vanilla_b2 = json.loads((vanilla.eval(0) / "metrics.json").read_text())["scores"]["bleu_2"]
    assert summary["scores"]["Vanilla"]["bleu_2"] == pytest.approx(vanilla_b2)
    assert summary["comparisons"][0]["metrics"]["bleu_2"]["model"] == pytest.approx(vanilla_b2)


def _eval_prompt(run: RunLayout, t: int) -> str:
    """The system prompt M^t's evaluation responses were made under (its parts' producer)."""
    return recorded_producer(run.eval(t) / "parts")["system_prompt"]
