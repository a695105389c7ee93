"""Fast checks of the Table 5 / Table 2 pieces: run variants, M0 = base in the layout and the
Serve registry, the Table 5 rendering, and the up-front errors."""

import json

import pytest

from esevo_ray.config import ConfigError, load_config
from esevo_ray.errors import UsageError
from esevo_ray.evaluation.ablation import interval_table, pairs_table
from esevo_ray.layout import RunLayout
from esevo_ray.pipeline import experiments
from esevo_ray.serving.registry import scan_models


def test_evolve_options_are_checked_at_load():
    cfg = load_config(None, ["evolve.init=base", "evolve.chosen=human_reference"])
    assert cfg.evolve.init == "base" and cfg.evolve.chosen == "human_reference"
    assert not cfg.evolve.seed_split
    with pytest.raises(ConfigError, match="evolve.init"):
        load_config(None, ["evolve.init=vanilla"])
    with pytest.raises(ConfigError, match="evolve.chosen"):
        load_config(None, ["evolve.chosen=gpt4o"])


def test_arms_and_baselines_are_their_own_runs(tmp_path):
    cfg = load_config(None, ["name=demo", f"output_dir={tmp_path}", "dpo.beta=0.3"])
    arms = experiments.arm_configs(cfg)
    assert {a: (c.name, c.evolve.chosen) for a, c in arms.items()} == {
        "{HM,P}": ("demo-hm", "human_reference"),
        "{SR,P}": ("demo-sr", "self_refined"),
    }
    for arm in arms.values():
        assert arm.evolve.init == "base" and arm.evolve.seed_split
        assert arm.eval.base_prompt == "vanilla"  # M0 scored as the paper's Table 5 M0
        assert arm.dpo.beta == 0.3 and arm.evolve.iterations == cfg.evolve.iterations
    baselines = experiments.baseline_configs(cfg)
    vanilla, esconv = baselines["Vanilla"], baselines["SFT-ESConv"]
    assert vanilla.evolve.init == "base" and vanilla.eval.base_prompt == "vanilla"
    assert esconv.data.alpaca_samples == 0 and esconv.data.seed == cfg.data.seed
    assert esconv.eval.base_prompt == cfg.eval.base_prompt == "task"
    assert len({cfg.digest(), esconv.digest(), *(a.digest() for a in arms.values())}) == 4
    with pytest.raises(ValueError, match="iterations"):
        experiments.variant(cfg, "x", evolve={"iterations": -1})
    # A run whose own M0 is the base model still gets an SFT-ESConv row that is trained.
    based = load_config(None, ["name=demo", f"output_dir={tmp_path}", "evolve.init=base"])
    assert experiments.baseline_configs(based)["SFT-ESConv"].evolve.init == "sft"


def test_table5_arms_take_their_seeds_as_appendix_b1_does(tmp_path):
    """{HM,P}: ESConv seeds and human responses; {HL,P}: Syn-ESC seeds and GPT-4 responses
    (golden of ExTES / ServeForEmo), only when the config seeds from them; {SR,P}: the
    config's seeds."""

    def seeds(*sources):
        cfg = load_config(None, [f"data.seed_sources=[{','.join(sources)}]"])
        return {
            title: (arm.data.seed_sources, arm.evolve.chosen)
            for title, arm in experiments.arm_configs(cfg).items()
        }

    human, refined = "human_reference", "self_refined"
    assert seeds("esconv") == {"{HM,P}": (["esconv"], human), "{SR,P}": (["esconv"], refined)}
    assert seeds("extes", "serveforemo") == {
        "{HM,P}": (["esconv"], human),  # not the GPT-written golden of the synthetic seeds
        "{HL,P}": (["extes", "serveforemo"], human),
        "{SR,P}": (["extes", "serveforemo"], refined),
    }
    assert seeds("esconv", "extes")["{HL,P}"] == (["extes"], human)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["evolve.iterations=0"], "at least one iteration"),
        (["data.max_seed_dialogues=1"], "data.max_seed_dialogues is 1"),
    ],
)
def test_pairs_table_refuses_what_cannot_be_split_before_running(tmp_path, overrides, message):
    cfg = load_config(None, [f"output_dir={tmp_path}", *overrides])
    with pytest.raises(UsageError, match=message):
        experiments.pairs_table(cfg)
    assert not any(tmp_path.iterdir()), "nothing may run before the check"


def _adapter(folder):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"x")


def test_base_m0_is_a_finished_model_without_adapter(tmp_path):
    run = RunLayout(tmp_path / "run")
    run.model(0).mkdir(parents=True)
    assert run.models() == {}
    run.base_marker(0).write_text(json.dumps({"model": "base"}))
    _adapter(run.adapter(1))
    _adapter(run.adapter(2) / "unfinished")  # no weights at m2/adapter itself
    assert run.is_base(0) and not run.is_base(1)
    assert run.models() == {0: None, 1: run.adapter(1)}
    assert run.finished() == {1: run.adapter(1)}
    assert run.seeds(2) == run.root / "m2" / "seed_contexts.parquet"
    with pytest.raises(ValueError, match="t >= 1"):
        run.seeds(0)

    served = scan_models(run.root)
    assert list(served) == ["base", "m0", "m1"]
    assert served["m0"].adapter is None and served["m1"].adapter == str(run.adapter(1))


def test_pairs_table_shows_the_change_from_the_row_before():
    m0 = {"scores": {"bleu_2": 10.0, "bleu_3": 8.0, "rouge_l": 10.0, "distinct_2": 80.0}}
    m1 = {"scores": {"bleu_2": 15.0, "bleu_3": 8.0, "rouge_l": 5.0, "distinct_2": 90.0}}
    m2 = {"scores": {"bleu_2": 16.5, "bleu_3": 10.0, "rouge_l": 5.0}}
    table = pairs_table(m0, {"{HM,P}": {"M1": m1, "M2": m2}}).splitlines()
    assert table[0] == "| Model | B-2 | % | B-3 | % | R-L | % | D-2 | % |"
    assert table[2] == "| M0 | 10.00 | – | 8.00 | – | 10.00 | – | 80.00 | – |"
    assert table[3].startswith("| **{HM,P}** |")
    assert table[4] == "| M1 | 15.00 | +50.00% | 8.00 | +0.00% | 5.00 | -50.00% | 90.00 | +12.50% |"
    assert table[5] == "| M2 | 16.50 | +10.00% | 10.00 | +25.00% | 5.00 | +0.00% | – | – |"


def test_interval_table_marks_intervals_that_exclude_zero():
    def r(diff, low, high):
        return {
            "diff": diff,
            "low": low,
            "high": high,
            "excludes_zero": low > 0 or high < 0,
            "n": 7,
        }

    comparisons = [
        {"label": "M1 vs M0", "metrics": {"bleu_2": r(1.5, 0.2, 2.9), "judge_overall": r(0, 0, 0)}},
        {"label": "M2 vs M1", "metrics": {"bleu_2": r(-0.5, -1.25, 0.5)}},
    ]
    lines = interval_table(comparisons, {"bleu_2": "B-2", "rouge_l": "R-L"}).splitlines()
    assert lines[0] == "| Comparison | B-2 | R-L | n |"
    assert lines[2] == "| M1 vs M0 | +1.50 * [+0.20, +2.90] | – | 7 |"
    assert lines[3] == "| M2 vs M1 | -0.50 [-1.25, +0.50] | – | 7 |"
