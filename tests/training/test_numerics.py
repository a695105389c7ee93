"""bf16: "auto" picks bf16 autocast only where the hardware computes in bf16."""

import pytest
import torch

from esevo_ray.config import load_config
from esevo_ray.training.common import use_bf16


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
