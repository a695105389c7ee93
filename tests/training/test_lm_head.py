"""TRL's fused LM head scores only labelled positions on CPU, with unchanged losses and gradients."""

from __future__ import annotations

import torch
import trl.trainer.utils as trl_utils
from trl.kernels import chunked_logprob

from esevo_ray.training.lm_head import every_position, score_labelled_positions_only
from esevo_ray.training.sft import build_sft_trainer, sft_job


class CountingHead:
    """TRL's chunked log-prob function, recording how many positions each call scores."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def apply(self, hidden, *args):
        self.rows.append(hidden.shape[0])
        return chunked_logprob.ChunkedLogProbFunction.apply(hidden, *args)


def loss_and_grads(model, batch, monkeypatch) -> tuple[list[int], torch.Tensor, dict]:
    head = CountingHead()
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", head)
    model.eval()  # no LoRA dropout: both passes see the same network
    model.zero_grad()
    out = model(**batch, fused_lm_head=True)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return head.rows, out, grads


def test_cpu_scores_only_labelled_positions_with_identical_results(
    make_cfg, sft_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)  # TRL's own
    cfg = make_cfg()
    trainer = build_sft_trainer(cfg, sft_job(cfg, sft_dir), str(tmp_path / "hf"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    positions = batch["labels"][:, 1:].numel()
    assert 0 < labelled < positions  # prompts are masked, so the two modes differ in work

    rows, fast, fast_grads = loss_and_grads(trainer.model, batch, monkeypatch)
    assert rows == [labelled]  # the trainer's set-up switched the CPU head to labelled rows

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)  # TRL's own
    rows, full, full_grads = loss_and_grads(trainer.model, batch, monkeypatch)
    assert rows == [positions]

    torch.testing.assert_close(fast.loss, full.loss)
    torch.testing.assert_close(fast.log_probs, full.log_probs)
    torch.testing.assert_close(fast.entropy, full.entropy)
    assert fast_grads.keys() == full_grads.keys() and fast_grads  # the LoRA weights
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, full_grads[name], msg=name)


def test_switch_is_idempotent_and_leaves_the_kernels_alone(monkeypatch):
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    assert score_labelled_positions_only()
    switched = trl_utils._use_triton
    assert score_labelled_positions_only()
    assert trl_utils._use_triton is switched  # not wrapped twice
    assert switched(torch.device("cpu"))
    assert not chunked_logprob._use_triton(torch.device("cpu"))  # the tiles stay torch ops on CPU


def test_every_position_restores_trls_own_choice_for_its_block():
    assert score_labelled_positions_only()
    cpu = torch.device("cpu")
    with every_position():
        assert not trl_utils._use_triton(cpu)
    assert trl_utils._use_triton(cpu)
