"""SFT trainer built from config, without Ray: label mask, LoRA-only updates, config checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from transformers import AutoTokenizer

from esevo_ray.io import write_parquet
from esevo_ray.prompts import TASK_PROMPT
from esevo_ray.training import common, rows
from esevo_ray.training.common import TrainJob
from esevo_ray.training.sft import build_sft_trainer, sft_job
from tests.training.tables import GOOD, sft_table

BLOCK_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def first_row(cfg, sft_dir, tmp_path) -> tuple:
    """The SFT trainer's tokenizer, the first table row, and its token ids and labels."""
    trainer = build_sft_trainer(cfg, sft_job(cfg, sft_dir), str(tmp_path / "hf"))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    tok, row = trainer.processing_class, sft_table().to_pylist()[0]
    return tok, row, batch["input_ids"][0], batch["labels"][0]


def test_labels_cover_only_the_supporter_response(make_cfg, sft_dir, tmp_path):
    tok, row, ids, labels = first_row(make_cfg(), sft_dir, tmp_path)
    supervised = labels != -100

    prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert not supervised[:n_prompt].any()  # system prompt, context, assistant header
    assert supervised[n_prompt:].all()
    assert tok.decode(ids[supervised]).startswith(GOOD[0] + "<|im_end|>")
    assert TASK_PROMPT in tok.decode(ids[~supervised])
    assert torch.equal(labels[supervised], ids[supervised])


# Mistral-7B-Instruct-v0.3's template (its non-tool part): the system message goes into the
# last message, when that is a user turn.
MISTRAL_TEMPLATE = (
    '{%- if messages[0]["role"] == "system" %}{%- set system_message = messages[0]["content"] %}'
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
    "{%- endif %}{{- bos_token }}{%- for message in loop_messages %}"
    '{%- if message["role"] == "user" %}{%- if loop.last and system_message is defined %}'
    '{{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}'
    '{%- else %}{{- "[INST] " + message["content"] + "[/INST]" }}{%- endif %}'
    '{%- elif message["role"] == "assistant" %}{{- " " + message["content"]|trim + eos_token }}'
    "{%- endif %}{%- endfor %}"
)


def with_template(tiny_model: Path, path: Path, template: str) -> Path:
    shutil.copytree(tiny_model, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = template
    tok.save_pretrained(path)
    return path


def test_a_template_that_moves_the_system_prompt_still_trains_on_the_reply_only(
    make_cfg, sft_dir, tiny_model, tmp_path
):
    """With Mistral's template TRL would score the seeker's last turn and train without
    P_task (it renders into the last turn only while that is a user turn)."""
    model = with_template(tiny_model, tmp_path / "mistral-like", MISTRAL_TEMPLATE)
    tok, row, ids, labels = first_row(make_cfg(f"model.path={model}"), sft_dir, tmp_path)
    supervised = labels != -100
    assert tok.decode(ids[supervised]).strip() == GOOD[0] + tok.eos_token
    prompt = tok.decode(ids[~supervised])
    assert TASK_PROMPT in prompt and prompt.endswith(row["prompt"][-1]["content"] + "[/INST]")
    # Generation's prompts (they end with a user turn) render as with the model's own template.
    own = AutoTokenizer.from_pretrained(model)
    for_generation = dict(tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(row["prompt"], **for_generation) == own.apply_chat_template(
        row["prompt"], **for_generation
    )


def test_a_template_that_renders_the_prompt_otherwise_before_a_reply_is_refused(
    tiny_model, tmp_path
):
    # The last message is marked: the prompt's last turn loses the mark once a reply follows.
    template = (
        "{% for m in messages %}{% if loop.last %}<last>{% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    model = with_template(tiny_model, tmp_path / "odd", template)
    with pytest.raises(ValueError, match="odd: its chat template renders the earlier turns"):
        common.load_tokenizer(str(model))


def test_a_step_changes_lora_weights_and_not_the_base(make_cfg, sft_dir, tmp_path):
    cfg = make_cfg()
    trainer = build_sft_trainer(cfg, sft_job(cfg, sft_dir), str(tmp_path / "hf"))
    model = trainer.model
    assert model.peft_config["default"].r == 8 and model.peft_config["default"].lora_alpha == 16
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # LoRA sits on every linear layer of the transformer blocks, not on the LM head.
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_A" in n}
    assert wrapped == BLOCK_LINEARS

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    after = dict(model.named_parameters())
    assert trainer.state.global_step == 2
    changed = {n for n, old in before.items() if not torch.equal(old, after[n].detach())}
    assert changed == trainable  # every LoRA matrix moved; no base parameter did


def test_a_trl_value_trl_refuses_is_a_config_error(make_cfg, tmp_path):
    """TRL checks values as its config is built, on the Ray Train worker: a ConfigError
    reaches the CLI as one line (raytrain.user_error), any other error as a traceback."""
    from trl import SFTConfig

    from esevo_ray.config import ConfigError
    from esevo_ray.training.common import trainer_args

    cfg = make_cfg("sft.trl={lr_scheduler_type: sideways}")
    with pytest.raises(ConfigError, match=r"sft: invalid training settings for SFTConfig"):
        trainer_args(
            SFTConfig, cfg.sft, where="sft", output_dir=str(tmp_path), has_eval=False,
            weights="float32",
        )  # fmt: skip


def test_unknown_trl_key_fails_when_the_config_loads(make_cfg):
    with pytest.raises(ValueError, match=r"unknown SFTConfig keys \['bogus_key'\]"):
        make_cfg("sft.trl={bogus_key: 1}")
    # Keys the Ray Train wiring sets: checkpoints to resume from, early stopping, the device.
    with pytest.raises(ValueError, match=r"trl\.save_strategy is set by the training wiring: "
                       "set save_steps"):  # fmt: skip
        make_cfg("sft.trl={save_strategy: 'no'}")
    with pytest.raises(ValueError, match=r"trl\.use_cpu .*: set scaling\.use_gpu"):
        make_cfg("dpo.trl={use_cpu: true}")


def test_early_stopping_on_a_metric_of_ones_own_keeps_its_best(make_cfg):
    """The direction of a metric named in trl is transformers' to infer (higher accuracy is
    better), not the eval loss's lower-is-better."""
    from trl import DPOConfig

    cfg = make_cfg(
        "dpo.eval_fraction=0.25", "dpo.trl={metric_for_best_model: eval_rewards/accuracies}"
    )
    args = common.trainer_args(
        DPOConfig, cfg.dpo, where="dpo", output_dir="/tmp/x", has_eval=True, weights="float32"
    )
    assert args.load_best_model_at_end and args.greater_is_better is True
    loss = common.trainer_args(DPOConfig, make_cfg("dpo.eval_fraction=0.25").dpo, where="dpo",
                               output_dir="/tmp/x", has_eval=True, weights="float32")  # fmt: skip
    assert loss.metric_for_best_model == "eval_loss" and loss.greater_is_better is False


def test_preflight_checks_steps_and_counts_rows(make_cfg, sft_dir, caplog):
    from esevo_ray import schema

    # Caught when the config loads, before any data is read.
    with pytest.raises(
        ValueError, match=r"save_steps \(3\) must be a multiple of eval_steps \(2\)"
    ):
        make_cfg("sft.eval_fraction=0.25", "sft.eval_steps=2", "sft.save_steps=3")
    cfg = make_cfg("sft.eval_fraction=0.25", "sft.eval_steps=2", "sft.save_steps=4")
    job = sft_job(cfg, sft_dir)
    assert common.preflight(cfg, job, schema.SFT_ROWS) == {
        "train_rows": 6,
        "eval_rows": 2,
    }
    # The workers' split holds out whole dialogues: two of four rows would overshoot 2.
    table = sft_table(8)
    ids = [f"d{i // 4}:{2 * (i % 4) + 1}" for i in range(8)]
    write_parquet(table.set_column(0, "example_id", pa.array(ids)), sft_dir / "sft.parquet")
    with caplog.at_level("WARNING", logger="esevo_ray.training"):
        assert common.preflight(cfg, job, schema.SFT_ROWS) == {
            "train_rows": 8,
            "eval_rows": 0,
        }
    # Early stopping turned off without a word.
    assert "sft: eval_fraction=0.25 of 8 rows holds out no whole dialogue" in caplog.text
    missing = TrainJob("sft", job.model_path, job.data_path, init_adapter=str(sft_dir))
    with pytest.raises(FileNotFoundError, match="adapter_config"):
        common.preflight(cfg, missing, schema.SFT_ROWS)


def test_eval_split_is_seeded_and_disjoint():
    table = sft_table(20)
    train, held = rows.split_eval(table, 0.25, seed=3)
    again = rows.split_eval(table, 0.25, seed=3)[1]
    other = rows.split_eval(table, 0.25, seed=4)[1]
    ids = lambda t: t.column("example_id").to_pylist()  # noqa: E731
    assert held.num_rows == 5 and train.num_rows == 15
    assert ids(held) == ids(again) and ids(held) != ids(other)
    assert rows.split_eval(table, 0.0, seed=3) == (table, None)


def test_eval_split_holds_out_whole_dialogues():
    """A later turn's prompt holds the earlier golden replies: a reply held out from the
    same dialogue would be seen in training, and the eval loss would flatter the model."""
    table = sft_table(24)
    ids = [f"d{i // 4}:{2 * (i % 4) + 1}" for i in range(20)] + [f"alpaca:a-{i}" for i in range(4)]
    table = table.set_column(0, "example_id", pa.array(ids))
    groups = rows.dialogue_of_rows(table)
    assert groups[:5] == ["d0"] * 4 + ["d1"] and groups[-1] == "alpaca:a-3"
    for seed in range(10):
        train, held = rows.split_eval(table, 0.25, seed, groups)
        dialogue = lambda t: {i.rsplit(":", 1)[0] for i in t.column("example_id").to_pylist()}  # noqa: E731
        assert not (dialogue(train) - {"alpaca"}) & (dialogue(held) - {"alpaca"}), seed
        assert 3 <= held.num_rows <= 6 and train.num_rows + held.num_rows == 24
    one = table.slice(0, 4)  # a single dialogue cannot be split: no eval rows
    assert rows.split_eval(one, 0.5, 0, rows.dialogue_of_rows(one)) == (one, None)
    # A large dialogue drawn first does not become the eval split.
    for seed in range(10):
        held = rows.split_eval(pa.table({"x": range(10)}), 0.1, seed, ["big"] * 9 + ["one"])[1]
        assert held.num_rows == 1, seed


def test_early_stopping_is_wired_when_there_is_an_eval_split(make_cfg, sft_dir, tmp_path):
    from transformers import EarlyStoppingCallback

    cfg = make_cfg(
        "sft.eval_fraction=0.25",
        "sft.eval_steps=1",
        "sft.save_steps=1",
        "sft.early_stopping_patience=1",
        "sft.gradient_checkpointing=true",
    )
    trainer = build_sft_trainer(cfg, sft_job(cfg, sft_dir), str(tmp_path / "hf"))
    args = trainer.args
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert args.gradient_checkpointing and not args.bf16 and args.warmup_steps == 0
    assert len(trainer.eval_dataset) == 2 and len(trainer.train_dataset) == 6
    assert any(isinstance(c, EarlyStoppingCallback) for c in trainer.callback_handler.callbacks)


def test_fit_prompt_drops_oldest_turns_and_keeps_system_and_answer(tiny_model):
    from transformers import AutoTokenizer

    from esevo_ray.training.rows import fit_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model)
    system = {"role": "system", "content": "be kind"}
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20}
        for i in range(9)
    ]
    answer = [{"role": "assistant", "content": "I hear you."}]
    full = tok.apply_chat_template([system, *turns, *answer], tokenize=False)
    budget = len(tok.encode(full, add_special_tokens=False)) // 2
    fitted, fits = fit_prompt(tok, [system, *turns], [answer], budget)
    assert fitted[0] == system and fitted[-1] == turns[-1] and fits
    assert 1 < len(fitted) < len(turns) + 1
    kept = tok.apply_chat_template([*fitted, *answer], tokenize=False)
    assert len(tok.encode(kept, add_special_tokens=False)) <= budget
    assert fit_prompt(tok, [system, *turns], [answer], 10**6) == ([system, *turns], True)
    # Only the last turn and no room left: kept, and said not to fit.
    fitted, fits = fit_prompt(tok, [system, *turns], [answer], 8)
    assert fitted == [system, turns[-1]] and not fits

    # A table counts the rows that lost turns (DPO's max_length below the generation
    # context's used to shorten them with no word) apart from those that still do not fit.
    import pyarrow as pa

    from esevo_ray.schema import SFT_ROWS
    from esevo_ray.training.rows import fit_table

    rows = [{"example_id": "d:1", "source": "esconv", "prompt": [system, *turns],
             "completion": answer},
            {"example_id": "d:3", "source": "esconv", "prompt": [system, turns[-1]],
             "completion": answer}]  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=SFT_ROWS)
    fitted_table, shortened, too_long = fit_table(table, tok, budget, ["completion"])
    assert (shortened, too_long) == (1, 0)
    assert len(fitted_table.column("prompt").to_pylist()[0]) < len(turns) + 1


def test_fit_prompt_makes_room_for_the_answer_with_most_tokens_not_most_characters(tiny_model):
    from transformers import AutoTokenizer

    from esevo_ray.training.rows import fit_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model)
    size = lambda msgs: len(  # noqa: E731
        tok.encode(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)
    )
    # Short turns: dropping one frees fewer tokens than the two answers differ by.
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "you"} for i in range(41)]
    chosen = [{"role": "assistant", "content": "you " * 40}]  # a common word: few tokens
    rejected = [{"role": "assistant", "content": "\U0001f600" * 30}]  # 30 characters, 4 tokens each
    assert len(chosen[0]["content"]) > len(rejected[0]["content"])
    assert size(rejected) > size(chosen)
    budget = size([*turns, *rejected]) // 2
    fitted, fits = fit_prompt(tok, turns, [chosen, rejected], budget)
    assert fits and size([*fitted, *rejected]) <= budget and size([*fitted, *chosen]) <= budget


def _first_evaluation_best(make_cfg, tmp_path, *overrides: str):
    """(cfg, job) of SFT on 16 rows evaluated at every step, with early stopping on a loss
    that falls while higher counts as better: the first evaluation is the best, every later
    one worse."""
    write_parquet(sft_table(16), tmp_path / "data" / "sft.parquet")
    cfg = make_cfg("sft.eval_fraction=0.25", "sft.eval_steps=1",
                   "sft.trl={greater_is_better: true}", *overrides)  # fmt: skip
    return cfg, sft_job(cfg, tmp_path / "data")


def _report_at(step: int, root: Path):
    """A callback that does at `step` what RayReportCallback does at each save: fill the
    Ray checkpoint (here the folder `root`)."""
    from transformers import TrainerCallback

    from esevo_ray.training.callbacks import fill_checkpoint

    class ReportAt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                fill_checkpoint(Path(args.output_dir), state, root)

    return ReportAt()


def test_a_worker_restarted_on_another_node_still_ends_on_the_best_adapter(
    make_cfg, tmp_path, tiny_model
):
    """Ray checkpoints carry the best evaluation's adapter, and the restore puts it where the
    resumed Trainer's state says it is, so early stopping's best model survives a restart
    on a node without the first worker's folders."""
    from safetensors.torch import load_file

    from esevo_ray.training.callbacks import restore_best

    cfg, job = _first_evaluation_best(
        make_cfg, tmp_path, "sft.max_steps=3", "sft.save_steps=1", "sft.early_stopping_patience=10"
    )
    ray_checkpoint = tmp_path / "ray-checkpoint"

    first_node = tmp_path / "node-a" / "hf"
    whole = build_sft_trainer(cfg, job, str(first_node), [_report_at(2, ray_checkpoint)])
    whole.train()
    assert whole.state.best_global_step == 1
    best = load_file(first_node / "checkpoint-1" / "adapter_model.safetensors")

    shutil.rmtree(first_node)  # the restarted worker's node does not have them
    other_node = tmp_path / "node-b" / "hf"
    restore_best(ray_checkpoint, other_node)
    resumed = build_sft_trainer(cfg, job, str(other_node))
    resumed.train(resume_from_checkpoint=str(ray_checkpoint / common.HF_DIR))
    assert resumed.state.global_step == 3 and resumed.state.best_global_step == 1
    # load_best_model_at_end: both runs end on step 1's adapter, not step 3's.
    for trainer in (whole, resumed):
        weights = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
        for name, value in best.items():
            key = name.replace(".weight", ".default.weight")
            torch.testing.assert_close(weights[key].detach(), value, msg=name)


def test_evaluations_between_saves_neither_break_the_report_nor_move_the_best(make_cfg, tmp_path):
    """With eval_steps below save_steps the best evaluation (step 1) may have no checkpoint:
    transformers then keeps no best one (and ends on the last), nor does the Ray checkpoint;
    copying step 1's stopped the report."""
    from transformers import TrainerCallback

    from esevo_ray.training.callbacks import BEST_DIR, fill_checkpoint

    cfg, job = _first_evaluation_best(
        make_cfg, tmp_path, "sft.max_steps=4", "sft.save_steps=2", "sft.early_stopping_patience=10"
    )
    reported = []

    class Report(TrainerCallback):  # what RayReportCallback sends at each save
        def on_save(self, args, state, control, **kwargs):
            root = tmp_path / f"ray-{state.global_step}"
            fill_checkpoint(Path(args.output_dir), state, root)
            reported.append((state.global_step, (root / BEST_DIR).exists()))

    trainer = build_sft_trainer(cfg, job, str(tmp_path / "hf"), [Report()])
    trainer.train()
    assert trainer.state.best_global_step == 1  # evaluated, never saved
    assert reported == [(2, False), (4, False)]
    assert trainer.state.best_model_checkpoint is None


def test_a_resumed_run_stops_early_where_an_uninterrupted_one_does(make_cfg, tmp_path):
    """Early stopping's patience count is restored with the checkpoint: reset, a run resumed
    after a failure would train `patience` evaluations longer."""
    cfg, job = _first_evaluation_best(
        make_cfg, tmp_path, "sft.max_steps=8", "sft.save_steps=1", "sft.early_stopping_patience=2"
    )

    whole = build_sft_trainer(cfg, job, str(tmp_path / "a"), [_report_at(2, tmp_path / "ray")])
    whole.train()
    assert whole.state.global_step == 3  # best at 1, then two worse evaluations
    resumed = build_sft_trainer(cfg, job, str(tmp_path / "a"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "ray" / common.HF_DIR))
    assert resumed.state.global_step == 3


def test_the_loop_keeps_an_adapter_its_own_ray_train_run_exported(
    make_cfg, sft_dir, tmp_path, tiny_model
):
    """`esevo sft` run alone, then `esevo evolve` with the same config: the loop trained SFT
    again from scratch (hours at full scale), since only its manifest said what was done."""
    import json

    from esevo_ray.models import build_tiny_adapter, model_fingerprint
    from esevo_ray.training import raytrain
    from esevo_ray.training.sft import sft_job, train_sft

    cfg = make_cfg()
    out = build_tiny_adapter(tiny_model, tmp_path / "m0" / "adapter", seed=1).resolve()
    name = raytrain.run_name(cfg, sft_job(cfg, sft_dir), out)
    base = model_fingerprint(tiny_model)
    summary = {"run_name": name, "model_fingerprint": base}
    (out / "train_summary.json").write_text(json.dumps(summary))
    weights = (out / "adapter_model.safetensors").read_bytes()
    assert train_sft(cfg, sft_dir, out, reuse=True) == out  # no Ray started: kept as it is
    assert (out / "adapter_model.safetensors").read_bytes() == weights
    other_run = raytrain.run_name(make_cfg("sft.seed=7"), sft_job(cfg, sft_dir), out)
    assert not raytrain._exported_by(out, other_run, base)
    # The base model converted again since (its path, in the run name, is the same).
    assert not raytrain._exported_by(out, name, "another base")


def _exported(cfg, job, out: Path, tiny_model: Path, seed: int = 1) -> Path:
    """An adapter at `out` with the summary `raytrain.export` writes for `job`'s run."""
    import json

    from esevo_ray.models import build_tiny_adapter, model_fingerprint
    from esevo_ray.training import raytrain

    build_tiny_adapter(tiny_model, out, seed=seed)
    summary = {
        "model_fingerprint": model_fingerprint(tiny_model),
        "trained_on": raytrain.trained_on(cfg, job),
    }
    (out / "train_summary.json").write_text(json.dumps(summary))
    return out


def test_an_adapter_is_known_by_what_it_was_trained_from_not_where_it_lies(
    make_cfg, sft_dir, tmp_path, tiny_model
):
    import json

    from esevo_ray.training.raytrain import trained_as

    cfg, job = make_cfg(), sft_job(make_cfg(), sft_dir)
    out = _exported(cfg, job, tmp_path / "m0" / "adapter", tiny_model)
    assert trained_as(out, cfg, job)
    # How it was carried out, or where the run folder lies now, is not what it trained.
    assert trained_as(out, make_cfg("sft.logging_steps=1", f"output_dir={tmp_path}/b"), job)
    moved = shutil.copytree(out, tmp_path / "elsewhere" / "adapter")
    assert trained_as(moved, cfg, job)
    # Other settings, other data, another init adapter, or no summary: not this stage's.
    assert not trained_as(out, make_cfg("sft.learning_rate=0.5"), job)
    other = write_parquet(sft_table(5), tmp_path / "other" / "sft.parquet").parent
    assert not trained_as(out, cfg, sft_job(cfg, other))
    init = str(_exported(cfg, job, tmp_path / "init", tiny_model, seed=2))
    assert not trained_as(out, cfg, TrainJob("sft", job.model_path, job.data_path, init))
    # An adapter exported before summaries recorded it is taken as it is.
    summary = json.loads((out / "train_summary.json").read_text())
    (out / "train_summary.json").write_text(json.dumps({**summary, "trained_on": None}))
    assert not trained_as(out, cfg, job)
    del summary["trained_on"]
    (out / "train_summary.json").write_text(json.dumps(summary))
    assert trained_as(out, cfg, job)
    (out / "train_summary.json").unlink()
    assert not trained_as(out, cfg, job)


def test_the_loop_trains_m0_again_over_an_adapter_made_there_from_other_data(
    make_cfg, tmp_path, tiny_model, monkeypatch, caplog
):
    """`esevo sft --data <another run's data>` wrote the run's m0 adapter: the loop, finding
    sft_m0's inputs unchanged, reused it as M0 and built every later model on it."""
    import logging

    from esevo_ray.layout import RunLayout
    from esevo_ray.pipeline.evolve import _initial
    from esevo_ray.pipeline.manifest import Manifest
    from esevo_ray.pipeline.runner import Runner

    cfg = make_cfg()
    run = RunLayout.of(cfg)
    write_parquet(sft_table(), run.sft_data)
    other = write_parquet(sft_table(5), tmp_path / "other" / "sft.parquet").parent
    trained: list[Path] = []

    def train_sft(cfg, data_dir, out, reuse=False):  # Ray Train's run, as exported
        trained.append(Path(data_dir))
        return _exported(cfg, sft_job(cfg, data_dir), Path(out), tiny_model, len(trained))

    monkeypatch.setattr("esevo_ray.training.sft.train_sft", train_sft)

    def loop() -> None:
        _initial(cfg, run, tiny_model, Runner(Manifest.open(run.root, cfg)))

    loop()
    loop()
    assert trained == [run.data]  # reused while it is what the run trains
    train_sft(cfg, other, run.adapter(0))  # `esevo sft --data <other>`, default --out
    with caplog.at_level(logging.WARNING, logger="esevo_ray.pipeline.runner"):
        loop()
    assert trained == [run.data, other, run.data]
    assert "rewritten since it ran" in caplog.text


def test_a_run_killed_after_early_stopping_stopped_it_stops_again(make_cfg, tmp_path):
    """transformers clears a restored stop as training begins: a run killed between early
    stopping (step 4) and its final report trained on to the next evaluation (step 6), and
    past it were that one better, ending on another adapter than an uninterrupted run."""
    from safetensors.torch import load_file

    from esevo_ray.training.callbacks import StopAgain, stopped_at

    cfg, job = _first_evaluation_best(
        make_cfg, tmp_path, "sft.max_steps=10", "sft.eval_steps=2", "sft.save_steps=2",
        "sft.early_stopping_patience=1",
    )  # fmt: skip
    whole = build_sft_trainer(cfg, job, str(tmp_path / "a"), [_report_at(4, tmp_path / "ray")])
    whole.train()
    assert whole.state.global_step == 4 and whole.state.best_global_step == 2
    best = load_file(tmp_path / "a" / "checkpoint-2" / "adapter_model.safetensors")

    checkpoint = tmp_path / "ray" / common.HF_DIR
    assert stopped_at(checkpoint) and not stopped_at(tmp_path / "a" / "checkpoint-2")
    resumed = build_sft_trainer(cfg, job, str(tmp_path / "a"), [StopAgain()])  # as train_loop
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 5  # the one step its loop takes before it looks
    weights = {n: p for n, p in resumed.model.named_parameters() if "lora_" in n}
    for name, value in best.items():
        torch.testing.assert_close(weights[name.replace(".weight", ".default.weight")].detach(),
                                   value, msg=name)  # fmt: skip
