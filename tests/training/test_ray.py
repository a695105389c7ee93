"""Whole Ray Train runs (four fits): SFT through the CLI on one worker, stopped by a failure
and run again (it resumes), then DPO from its adapter on two DDP workers with an injected
failure that the run recovers from, and a DPO run whose worker finds no row to train on."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from ray.train import TrainingFailedError
from transformers import AutoModelForCausalLM, AutoTokenizer

from esevo_ray.cli.train import add_parsers
from esevo_ray.config import load_config
from esevo_ray.io import write_parquet
from esevo_ray.models import adapter_hash
from esevo_ray.training.dpo import dpo_job, train_dpo
from esevo_ray.training.raytrain import trained_as
from tests.training.tables import TINY_TRAIN, pairs_table, sft_table

pytestmark = pytest.mark.slow

ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "config.yaml",
)


def _tiny_settings() -> dict:
    return {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY_TRAIN)}


@pytest.fixture(scope="module")
def sft_adapter(ray_local, tiny_model, tmp_path_factory) -> Path:
    """`esevo sft` on one worker, 3 steps with an eval split and a checkpoint every step."""
    root = tmp_path_factory.mktemp("sft-run")
    write_parquet(sft_table(), root / "data" / "sft.parquet")
    sft = _tiny_settings()
    sft.update(
        max_steps=3, eval_fraction=0.25, eval_steps=1, save_steps=1, early_stopping_patience=5
    )
    config = {
        "name": "t",
        "output_dir": str(root / "runs"),
        "model": {"path": str(tiny_model), "dtype": "auto"},
        "sft": sft,
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    command = ["sft", "--config", str(root / "run.yaml"), "--data", str(root / "data"),
               "--out", str(root / "m0"), "sft.scaling.num_workers=1"]  # fmt: skip
    # A run that fails after its checkpoint at step 2 (max_failures 0: the command fails, as
    # a stopped driver would leave it) ...
    stopped = parser.parse_args([*command, "sft.scaling.inject_failure_at_step=2"])
    with pytest.raises(TrainingFailedError, match="injected failure"):
        stopped.func(stopped)
    assert not (root / "m0").exists()
    # ... and the same command again, which resumes it.
    args = parser.parse_args(command)
    assert args.func(args) == 0
    # Exported, the run's checkpoints go: the command run again would train afresh.
    assert (root / "ray_train").is_dir() and not list((root / "ray_train").iterdir())
    return root / "m0"


def test_sft_run_writes_an_adapter_that_reloads_and_generates(sft_adapter, tiny_model):
    for name in ADAPTER_FILES:
        assert (sft_adapter / name).exists(), name
    summary = json.loads((sft_adapter / "train_summary.json").read_text())
    assert summary["global_step"] == 3 and summary["world_size"] == 1
    assert len(summary["eval_losses"]) == 3 and summary["best_eval_loss"] is not None
    # The adapter is the best evaluation's (a checkpoint every step), which the summary names.
    best = min(summary["eval_losses"], key=lambda e: e[1])
    assert summary["adapter_step"] == best[0] and best[1] == summary["best_eval_loss"]
    assert summary["best_metric"] == {"name": "eval_loss", "value": best[1]}
    assert summary["config_digest"] == load_config(sft_adapter / "config.yaml").digest()
    # Run again after the failure, the stage continued from the checkpoint at step 2.
    assert summary["resumed_from_step"] == 2 and summary["run_name"].startswith("t-sft-")
    numerics = summary["numerics"]  # what the worker chose, on the machine it ran on
    assert numerics["weights"] == "float32" and numerics["device"] == "cpu"  # dtype auto, CPU
    assert isinstance(numerics["bf16_autocast"], bool) and numerics["torch_threads"] >= 1

    tok = AutoTokenizer.from_pretrained(sft_adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), sft_adapter)
    trained_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained_b and all(p.abs().sum() > 0 for p in trained_b)  # B starts at zero
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "I feel sad."}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5


def test_dpo_on_two_workers_recovers_from_an_injected_failure(
    sft_adapter, tiny_model, tmp_path, caplog
):
    pairs = write_parquet(pairs_table(), tmp_path / "pairs.parquet")  # made by the base model
    dpo = [f"dpo.{o}" for o in TINY_TRAIN] + [
        "dpo.max_steps=4",
        "dpo.save_steps=2",
        "dpo.eval_fraction=0.25",
        "dpo.eval_steps=2",
        "dpo.scaling.num_workers=2",
        "dpo.scaling.max_failures=1",
        "dpo.scaling.inject_failure_at_step=2",
    ]
    cfg = load_config(None, [f"model.path={tiny_model}", "model.dtype=float32", "name=t", *dpo])
    with caplog.at_level(logging.WARNING, logger="esevo_ray.training.dpo"):
        out = train_dpo(cfg, pairs, sft_adapter, tmp_path / "m1")
    assert "they are off-policy for it" in caplog.text

    summary = json.loads((out / "train_summary.json").read_text())
    # The second attempt resumed from the checkpoint reported at step 2.
    assert summary["resumed_from_step"] == 2
    assert summary["global_step"] == 4 and summary["world_size"] == 2
    assert summary["init_adapter_hash"] == adapter_hash(sft_adapter) != adapter_hash(out)
    # What the loop checks before it reuses the adapter as M^t: trained from these inputs.
    assert trained_as(out, cfg, dpo_job(cfg, pairs, sft_adapter))
    assert not trained_as(out, cfg, dpo_job(cfg, pairs, None))
    assert "rewards/margins" in summary["last_metrics"]
    assert not (out / "ref").exists()
    assert (tmp_path / "ray_train").is_dir()  # Ray storage beside the output, not inside it


def test_a_workers_data_error_reaches_the_driver_as_itself(sft_adapter, tiny_model, tmp_path):
    """Ray Train wraps a worker's exception in a TrainingFailedError: the CLI printed its
    traceback as a bug's for data the user can fix."""
    from esevo_ray.data.dialogue import DataError

    pairs = write_parquet(pairs_table(), tmp_path / "pairs.parquet")
    dpo = [f"dpo.{o}" for o in TINY_TRAIN] + ["dpo.max_length=300", "dpo.scaling.num_workers=1"]
    cfg = load_config(None, [f"model.path={tiny_model}", "model.dtype=float32", "name=t", *dpo])
    with pytest.raises(DataError, match="dpo: every one of the 8 training rows was dropped"):
        train_dpo(cfg, pairs, sft_adapter, tmp_path / "m1")
    assert not (tmp_path / "m1").exists()
