"""DPO trainer built from config, without Ray: the reference is M^t, loss = DPO + gamma * NLL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoModelForCausalLM

from esevo_ray.models import build_tiny_adapter
from esevo_ray.training.callbacks import copy_trainable_checkpoint
from esevo_ray.training.common import save_adapter
from esevo_ray.training.dpo import (
    build_dpo_trainer,
    dpo_job,
    dpo_loss_terms,
    off_policy_generators,
)


@pytest.fixture
def mt_adapter(tiny_model, make_cfg, tmp_path) -> Path:
    """An M^t adapter whose LoRA weights are not zero, so M^t differs from the base."""
    return build_tiny_adapter(tiny_model, tmp_path / "m_t", seed=1, rank=8, scale=0.3)


def _perturb(model, adapter: str, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".lora_B.{adapter}." in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def _load_mt(tiny_model, adapter) -> PeftModel:
    return PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), adapter
    ).eval()


def _completion_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed completion log-probs per sequence, per-token log-probs, completion mask."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    per_token = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].bool()
    return (per_token * mask).sum(1), per_token, mask


def _batch(trainer, n: int = 4):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def test_reference_log_probs_are_those_of_the_init_adapter(
    make_cfg, pairs_path, mt_adapter, tiny_model, tmp_path
):
    cfg = make_cfg()
    trainer = build_dpo_trainer(cfg, dpo_job(cfg, pairs_path, mt_adapter), str(tmp_path / "hf"))
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".ref." in n)
    batch = _batch(trainer)
    with torch.no_grad():
        want = _completion_logps(_load_mt(tiny_model, mt_adapter), batch)[0]
        base = _completion_logps(AutoModelForCausalLM.from_pretrained(tiny_model).eval(), batch)[0]
        ref = torch.cat(trainer.compute_ref_log_probs(model, batch))
    torch.testing.assert_close(ref, want, atol=1e-4, rtol=1e-5)
    assert (ref - base).abs().max() > 1e-2  # M^t is not the base: the check can tell them apart

    trainer.train()  # M^{t+1} moves away from M^t; the reference stays M^t
    with torch.no_grad():
        ref_after = torch.cat(trainer.compute_ref_log_probs(model, batch))
        policy = _completion_logps(model, batch)[0]
    torch.testing.assert_close(ref_after, want, atol=1e-4, rtol=1e-5)
    assert (policy - want).abs().max() > 1e-3

    save_adapter(trainer, tmp_path / "out")
    assert not (tmp_path / "out" / "ref").exists()
    with torch.no_grad():
        reloaded = _completion_logps(_load_mt(tiny_model, tmp_path / "out"), batch)[0]
    torch.testing.assert_close(reloaded, policy, atol=1e-4, rtol=1e-5)


def test_round_zero_trains_a_fresh_adapter_against_the_base(
    make_cfg, pairs_path, tiny_model, tmp_path
):
    cfg = make_cfg()
    trainer = build_dpo_trainer(cfg, dpo_job(cfg, pairs_path, None), str(tmp_path / "hf"))
    assert set(trainer.model.peft_config) == {"default"}
    batch = _batch(trainer)
    with torch.no_grad():
        base = _completion_logps(AutoModelForCausalLM.from_pretrained(tiny_model).eval(), batch)[0]
        ref = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    torch.testing.assert_close(ref, base, atol=1e-4, rtol=1e-5)


def test_loss_is_dpo_plus_gamma_times_chosen_nll(
    make_cfg, pairs_path, mt_adapter, tiny_model, tmp_path
):
    beta = 0.3
    reference = _load_mt(tiny_model, mt_adapter)
    for gamma in (0.0, 0.5):
        cfg = make_cfg(f"dpo.beta={beta}", f"dpo.gamma={gamma}")
        trainer = build_dpo_trainer(
            cfg, dpo_job(cfg, pairs_path, mt_adapter), str(tmp_path / f"hf{gamma}")
        )
        assert trainer.loss_types == dpo_loss_terms(gamma)["loss_type"]
        _perturb(trainer.model, "default", seed=2, scale=0.2)  # policy != reference
        batch = _batch(trainer)
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch)
            policy, per_token, mask = _completion_logps(trainer.model, batch)
            ref = _completion_logps(reference, batch)[0]
        (pc, pr), (rc, rr) = policy.chunk(2), ref.chunk(2)
        dpo = -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()
        nll = -per_token.chunk(2)[0][mask.chunk(2)[0]].mean()  # mean over all chosen tokens
        assert dpo > 0 and nll > 0 and (pc - rc - pr + rr).abs().max() > 1e-2
        torch.testing.assert_close(loss, dpo + gamma * nll, atol=1e-4, rtol=1e-5)


def test_negative_gamma_is_rejected():
    assert dpo_loss_terms(1.0) == {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}
    with pytest.raises(ValueError, match="gamma"):
        dpo_loss_terms(-0.1)


def test_pairs_of_another_generator_than_m_t_are_named(mt_adapter, tmp_path):
    from esevo_ray.io import write_parquet
    from esevo_ray.models import adapter_hash
    from tests.training.tables import pairs_table

    mine = f"{mt_adapter.parent.name}+{adapter_hash(mt_adapter)}"
    table = pairs_table(4)
    on_policy = [i < 2 for i in range(4)]
    table = table.set_column(
        table.schema.get_field_index("adapter_hash"), "adapter_hash",
        [[adapter_hash(mt_adapter) if m else "" for m in on_policy]],
    ).set_column(
        table.schema.get_field_index("generator_model"), "generator_model",
        [[mine if m else "tiny-llama" for m in on_policy]],
    )  # fmt: skip
    mixed = write_parquet(table, tmp_path / "mixed.parquet")
    assert off_policy_generators(mixed, mt_adapter) == ["tiny-llama"]
    assert off_policy_generators(mixed, None) == [mine]
    only_mine = write_parquet(table.slice(0, 2), tmp_path / "mine.parquet")
    assert off_policy_generators(only_mine, mt_adapter) == []


def test_resume_restores_the_trained_adapter_and_keeps_the_reference(
    make_cfg, pairs_path, mt_adapter, tiny_model, tmp_path
):
    """What a restarted Ray worker does: rebuild from M^t, resume from the copied checkpoint."""
    cfg = make_cfg("dpo.max_steps=4", "dpo.save_steps=2")
    job = dpo_job(cfg, pairs_path, mt_adapter)
    whole = build_dpo_trainer(cfg, job, str(tmp_path / "whole"))
    whole.train()
    raw = tmp_path / "whole" / "checkpoint-2"
    assert (raw / "ref" / "adapter_config.json").exists()  # HF saves the frozen copy too
    copy_trainable_checkpoint(raw, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "ref").exists()

    resumed = build_dpo_trainer(cfg, job, str(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "ckpt"))
    batch = _batch(whole)
    with torch.no_grad():
        want = _completion_logps(whole.model, batch)[0]
        got = _completion_logps(resumed.model, batch)[0]
        ref = torch.cat(resumed.compute_ref_log_probs(resumed.model, batch))
        mt = _completion_logps(_load_mt(tiny_model, mt_adapter), batch)[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ref, mt, atol=1e-4, rtol=1e-5)


def test_an_unfinished_generation_folder_is_refused(make_cfg, pairs_path, tmp_path):
    """Parts of a stopped `esevo generate` hold only the batches it finished."""
    from esevo_ray.data.dialogue import DataError
    from esevo_ray.parts import claim

    folder = tmp_path / "pairs"
    folder.mkdir()
    claim(folder, {"stage": "Generator"})
    (folder / "part-0.parquet").write_bytes(pairs_path.read_bytes())
    with pytest.raises(DataError, match="its generation has not finished"):
        dpo_job(make_cfg(), folder, None)
    (folder / "manifest.json").write_text("{}")
    assert dpo_job(make_cfg(), folder, None).data_path == str(folder.resolve())


def test_rows_that_do_not_fit_max_length_are_named(make_cfg, pairs_path, tmp_path, caplog):
    """Pairs whose last turn alone leaves no room for an answer (TRL cuts it), and pairs TRL
    drops because the prompt fills max_length, are counted in warnings, not lost silently."""
    import logging

    # The tiny pairs' prompts are 530-533 tokens, prompt + chosen 546-552.
    cfg = make_cfg("dpo.max_length=531")
    with caplog.at_level(logging.WARNING, logger="esevo_ray.training"):
        trainer = build_dpo_trainer(cfg, dpo_job(cfg, pairs_path, None), str(tmp_path / "hf"))
    assert "dpo: 8 of 8 rows do not fit dpo.max_length=531" in caplog.text
    dropped = 8 - len(trainer.train_dataset)
    assert dropped > 0
    assert f"dpo: {dropped} of 8 training rows dropped: the prompt fills" in caplog.text
    from esevo_ray.data.dialogue import DataError

    # None left: a clear error, not transformers' "num_samples should be a positive integer"
    cfg = make_cfg("dpo.max_length=300")
    with pytest.raises(DataError, match=r"dpo: every one of the 8 training rows was dropped"):
        build_dpo_trainer(cfg, dpo_job(cfg, pairs_path, None), str(tmp_path / "hf2"))


def test_dpo_lora_settings_that_an_init_adapter_overrides_are_named(
    make_cfg, pairs_path, mt_adapter, caplog
):
    import logging

    from esevo_ray import schema
    from esevo_ray.training import common

    job = dpo_job(make_cfg(), pairs_path, mt_adapter)  # M^t: r=8
    with caplog.at_level(logging.WARNING, logger="esevo_ray.training"):
        common.preflight(make_cfg(), job, schema.PAIRS)
        assert "is not used" not in caplog.text
        common.preflight(make_cfg("dpo.lora.r=16"), job, schema.PAIRS)
    assert "dpo.lora {'r': 16, 'alpha': 16} is not used" in caplog.text
    assert "whose LoRA has {'r': 8" in caplog.text
