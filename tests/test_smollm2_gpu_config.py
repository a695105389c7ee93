"""configs/smollm2-gpu.yaml is the full-scale one-GPU run the README and issue promise."""

from pathlib import Path

from esevo_ray.config import load_config

PATH = Path(__file__).resolve().parents[1] / "configs/smollm2-gpu.yaml"


def test_full_data_scale():
    cfg = load_config(PATH)
    assert cfg.model.path is None, "the packaged SmolLM2-135M-Instruct"
    d = cfg.data
    assert d.max_train_dialogues is None, "SFT on every ESConv training dialogue"
    assert d.max_eval_dialogues is None and cfg.eval.max_examples is None, "the whole test split"
    assert d.max_seed_dialogues is None and cfg.generation.max_contexts >= 256
    assert cfg.evolve.iterations == 2


def test_gpu_training_and_generation():
    cfg = load_config(PATH)
    assert cfg.model.dtype == "bfloat16"
    for section in (cfg.sft, cfg.dpo):
        assert section.bf16 and section.scaling.use_gpu
        assert (section.lora.r, section.lora.alpha) == (8, 16)
    g = cfg.generation
    # vLLM where it is installed, transformers otherwise; guided JSON on both.
    assert g.engine == "auto" and g.guided_json and "dtype" not in g.vllm
    assert 0 < g.vllm["gpu_memory_utilization"] <= 0.9
    d = g.decoding
    assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty) == (0.9, 0.8, 50, 1.2)
    assert (cfg.dpo.beta, cfg.dpo.gamma) == (0.1, 1.0)
    assert "GB" in PATH.read_text().split("name:")[0], "memory note missing"
