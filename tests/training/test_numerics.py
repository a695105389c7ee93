"""bf16: "auto" picks bf16 autocast only where the hardware computes in bf16; a float16
model on a GPU without it trains with fp16 autocast and its gradient scaler."""

import pytest
import torch

from esevo_ray.config import load_config
from esevo_ray.training.common import mixed_precision, trainer_args, use_bf16


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(True, False, True), (False, True, True), (False, False, False)],
)
def test_auto_follows_the_cpu(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert use_bf16(load_config(None, ["sft.bf16=auto"]).sft) is expected
    # An explicit setting is kept whatever the CPU.
    assert use_bf16(load_config(None, ["sft.bf16=false"]).sft) is False
    assert use_bf16(load_config(None, ["sft.bf16=true"]).sft) is True


def test_auto_on_gpu_workers_asks_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, ["dpo.bf16=auto", "dpo.scaling.use_gpu=true"])
    assert use_bf16(cfg.dpo) is False


def test_float16_weights_on_a_gpu_without_bf16_train_with_the_gradient_scaler(monkeypatch):
    """A T4 or V100 (model.dtype=float16, no bf16): fp16 autocast, which on CUDA brings the
    gradient scaler transformers sets up only for fp16=True; small float16 gradients
    underflow to zero without it."""
    from trl import DPOConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no bf16 on "this GPU"
    gpu = load_config(None, ["model.dtype=float16", "dpo.bf16=auto", "dpo.scaling.use_gpu=true"])
    args = trainer_args(
        DPOConfig, gpu.dpo, where="dpo", output_dir="/tmp/x", has_eval=False, weights="float16"
    )
    assert (args.fp16, args.bf16) == (True, False)
    # bf16 autocast, float32 or bfloat16 weights, or a CPU: no fp16.
    bf16 = gpu.dpo.model_copy(update={"bf16": True})
    assert mixed_precision(bf16, "float16") == {"bf16": True, "fp16": False}
    assert mixed_precision(gpu.dpo, "float32") == {"bf16": False, "fp16": False}
    assert mixed_precision(gpu.dpo, "bfloat16") == {"bf16": False, "fp16": False}
    cpu = load_config(None, ["model.dtype=float16", "dpo.bf16=false"])
    assert mixed_precision(cpu.dpo, "float16") == {"bf16": False, "fp16": False}
