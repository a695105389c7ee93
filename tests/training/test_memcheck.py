"""The 8B-shaped memory check: its code path at a tiny shape on CPU, the measurement on CUDA."""

import math
from pathlib import Path

import pytest
import torch

from esevo_ray.config import load_config
from esevo_ray.training.memcheck import KNOWN_SHAPES, NO_CUDA, memory_check, model_shape

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LLAMA3 = CONFIGS / "llama3-8b-l40.yaml"


def tiny_llama():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=False,
    )  # fmt: skip


def meta_parameters(shape) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(shape).parameters())


def lora_parameters(shape, r: int) -> int:
    """LoRA on every linear layer of every block: r * (fan_in + fan_out) each."""
    h, i, d = shape.hidden_size, shape.intermediate_size, shape.head_dim
    q, kv = shape.num_attention_heads * d, shape.num_key_value_heads * d
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return r * per_layer * shape.num_hidden_layers


def test_llama3_config_steps_run_at_a_tiny_shape_on_cpu():
    # The 8B config's batch, accumulation, bf16, checkpointing and LoRA; short rows keep it quick.
    cfg = load_config(LLAMA3, ["sft.max_length=96", "dpo.max_length=128"])
    shape = tiny_llama()
    report = memory_check(cfg, shape=shape, steps=2, device="cpu")
    assert report["device"] == "cpu" and report["fits"] is None and report["finite_losses"]
    sft, dpo = report["stages"]["sft"], report["stages"]["dpo"]
    assert (sft["tokens_per_sequence"], dpo["tokens_per_sequence"]) == (96, 128)
    # DPO: 2 pairs (chosen + rejected: 4 sequences) x 4 steps, SFT 4 rows x 2: 8 a step.
    assert (sft["sequences_per_micro_batch"], dpo["sequences_per_micro_batch"]) == (4, 4)
    assert (sft["gradient_accumulation_steps"], dpo["gradient_accumulation_steps"]) == (2, 4)
    for stage in (sft, dpo):
        assert stage["optimizer_steps"] == 2 and len(stage["losses"]) == 2
        assert all(math.isfinite(x) for x in stage["losses"])
        assert len(stage["step_seconds"]) == 2
        assert stage["gradient_checkpointing"] and stage["bf16"]
        assert stage["parameters"] == meta_parameters(shape)
        # Only one adapter trains: the base is frozen, and so is DPO's "ref" copy.
        assert stage["trainable_parameters"] == lora_parameters(shape, r=8)
        assert stage["peak_allocated_gb"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_check_skips_with_a_message(caplog):
    report = memory_check(load_config(LLAMA3))
    assert report == {"config": "llama3-8b-l40", "skipped": NO_CUDA}
    assert "no CUDA device" in caplog.text and "--device cpu" in NO_CUDA


def test_an_unknown_shape_is_named_on_any_machine():
    """`esevo bench memory --shape bogus` skipped without CUDA, and the mistake surfaced
    only on the GPU machine."""
    from esevo_ray.errors import UsageError

    with pytest.raises(UsageError, match="model shape 'bogus': no config.json there"):
        memory_check(load_config(LLAMA3), shape="bogus")


@pytest.mark.parametrize(
    "config, params",
    [
        ("llama3-8b-l40.yaml", 8_030_261_248),
        ("qwen2-7b-l40.yaml", 7_615_616_512),
        ("mistral-7b-l40.yaml", 7_248_023_552),
    ],
)
def test_known_shapes_have_the_published_sizes(config, params):
    cfg = load_config(CONFIGS / config)
    assert Path(cfg.model.path).name in KNOWN_SHAPES
    assert meta_parameters(model_shape(cfg)) == params


def test_a_shape_folder_with_config_json_wins(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    shape = model_shape(load_config(LLAMA3), tmp_path)
    assert (shape.hidden_size, shape.num_key_value_heads) == (64, 1)


def test_bad_arguments_are_named():
    cfg = load_config(LLAMA3)
    with pytest.raises(ValueError, match="no config.json there and not a known shape"):
        model_shape(cfg, "/nowhere/Some-Model")
    with pytest.raises(ValueError, match="device must be"):
        memory_check(cfg, device="tpu")
    with pytest.raises(ValueError, match="stages from"):
        memory_check(cfg, stages=("ppo",), device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_llama3_8b_dpo_and_sft_fit_an_l40():
    report = memory_check(load_config(LLAMA3), steps=2)
    assert report["finite_losses"], report
    assert report["fits"], {k: s["peak_reserved_gb"] for k, s in report["stages"].items()}
