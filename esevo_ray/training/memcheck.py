"""Peak GPU memory of a config's SFT and DPO steps, on a random model of its model's shape.

No weights are needed. The model is built from a transformers config (the `config.json` of
`model.path` when the folder is there, else the published shape of the paper backbone the
folder is named after, e.g. Meta-Llama-3-8B-Instruct) with random weights, directly on the
device in `model.dtype`, so an 8B model never passes through CPU memory. The stage's LoRA is
applied and the project's own TRL trainers run a few optimizer steps with the stage's TRL
arguments (`common.trainer_args`: batch, gradient accumulation, max_length, bf16, gradient
checkpointing, AdamW) on rows that fill `max_length` exactly, the worst case. DPO trains a
LoRA adapter against a frozen copy of it ("ref"), as every round after the first does, with
the loop's loss terms. The peak is `torch.cuda.max_memory_allocated` over model, optimizer
and steps; `peak_reserved_gb` adds the allocator's cache.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from esevo_ray.config import RunConfig, TrainSection
from esevo_ray.errors import UsageError
from esevo_ray.numerics import release_gpu_memory, weights_dtype
from esevo_ray.training.common import Stage, lora_config, trainer_args
from esevo_ray.training.dpo import dpo_loss_terms

logger = logging.getLogger(__name__)

GB = 1e9
# Public config.json shapes of the paper's backbones (configs/*-l40.yaml), so the check runs
# without the weights. Only what sets memory is given: sizes, heads, vocabulary.
KNOWN_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "Meta-Llama-3-8B-Instruct": ("llama", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
    )),
    "Qwen2-7B-Instruct": ("qwen2", dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
    )),
    "Mistral-7B-Instruct-v0.3": ("mistral", dict(
        vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
    )),
}  # fmt: skip
SHAPE_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "intermediate_size", "vocab_size",
)  # fmt: skip
NO_CUDA = (
    "skipped: no CUDA device is visible (torch.cuda.is_available() is False). The memory "
    "check measures GPU memory: run it on a GPU machine (`make venv-gpu`), or with "
    "device='cpu' (`--device cpu`) to exercise the code path without a measurement."
)


def model_shape(cfg: RunConfig, shape: Any = None) -> Any:
    """The transformers config to build: `shape` (a config, a folder or a known name), else
    the config.json of `cfg.model.path`, else the known shape named by its folder.

    Raises:
        ValueError: no config.json and the name is not in KNOWN_SHAPES.
    """
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(shape, PretrainedConfig):
        return shape
    if shape is None and cfg.model.path is None:
        from esevo_ray.models import resolve_model

        shape = resolve_model(None)
    source = Path(str(shape if shape is not None else cfg.model.path)).expanduser()
    if (source / "config.json").exists():
        return AutoConfig.from_pretrained(source)
    if source.name in KNOWN_SHAPES:
        model_type, sizes = KNOWN_SHAPES[source.name]
        return AutoConfig.for_model(model_type, tie_word_embeddings=False, **sizes)
    raise UsageError(
        f"model shape {str(source)!r}: no config.json there and not a known shape "
        f"(known: {sorted(KNOWN_SHAPES)}); pass a folder holding a config.json"
    )


def word_tokenizer(size: int) -> Any:
    """A tokenizer whose every space-separated word `w<i>` is exactly one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(size - 2)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def worst_case_rows(stage: Stage, section: TrainSection, rows: int, words: int) -> Any:
    """Rows whose tokens fill `section.max_length` exactly (the EOS that TRL adds included).

    A quarter of each sequence is the completion (chosen and rejected alike for DPO).
    """
    import random

    from datasets import Dataset

    rng = random.Random(section.seed)
    completion = max(1, section.max_length // 4)
    prompt = section.max_length - completion - 1

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(words - 2)}" for _ in range(n))

    columns: dict[str, list[str]] = {"prompt": [], "completion": [], "chosen": [], "rejected": []}
    for _ in range(rows):
        columns["prompt"].append(text(prompt))
        for name in ("completion", "chosen", "rejected"):
            columns[name].append(" " + text(completion))
    keep = ("prompt", "completion") if stage == "sft" else ("prompt", "chosen", "rejected")
    return Dataset.from_dict({k: columns[k] for k in keep})


def _probe() -> Any:
    from transformers import TrainerCallback

    class StepProbe(TrainerCallback):
        """Seconds and losses of every optimizer step."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepProbe()


def stage_section(cfg: RunConfig, stage: Stage, steps: int, on_gpu: bool) -> TrainSection:
    """The stage's settings, set to run `steps` optimizer steps with no eval and no saves."""
    section = cfg.sft if stage == "sft" else cfg.dpo
    return section.model_copy(
        update={
            "max_steps": steps,
            "eval_fraction": 0.0,
            "early_stopping_patience": None,
            "save_steps": steps + 1,
            "logging_steps": 1,
            "scaling": section.scaling.model_copy(update={"use_gpu": on_gpu}),
        }
    )


def build_stage_trainer(
    cfg: RunConfig, stage: Stage, section: TrainSection, model: Any, rows: Any, out_dir: str,
    tokenizer: Any, callbacks: list[Any],
) -> Any:  # fmt: skip
    """The loop's trainer for `stage` around an in-memory model (see sft.py and dpo.py)."""
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    weights = weights_dtype(cfg.model.dtype, use_gpu=section.scaling.use_gpu)
    common = dict(where=stage, output_dir=out_dir, has_eval=False, weights=weights)
    if stage == "sft":
        args = trainer_args(SFTConfig, section, **common, completion_only_loss=True)
        return SFTTrainer(
            model=model, args=args, train_dataset=rows, processing_class=tokenizer,
            peft_config=lora_config(section.lora), callbacks=callbacks,
        )  # fmt: skip
    from peft import get_peft_model

    args = trainer_args(
        DPOConfig, section, **common, beta=cfg.dpo.beta, **dpo_loss_terms(cfg.dpo.gamma)
    )
    # A PEFT model without ref_model: DPOTrainer freezes a "ref" copy of the adapter (M^t).
    model = get_peft_model(model, lora_config(section.lora))
    return DPOTrainer(
        model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks
    )


def sequence_tokens(trainer: Any, stage: Stage) -> int:
    """Tokens of the first training sequence, as the trainer tokenized it."""
    row = trainer.train_dataset[0]
    if stage == "sft":
        return len(row["input_ids"])
    return len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))


def run_stage(cfg: RunConfig, stage: Stage, shape: Any, *, steps: int, device: str) -> dict:
    """`steps` optimizer steps of `stage` on a random model of `shape`; memory and timings."""
    import torch
    from transformers import AutoModelForCausalLM

    on_gpu = device == "cuda"
    section = stage_section(cfg, stage, steps, on_gpu)
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(section.seed)
    with torch.device(device):
        dtype = getattr(torch, weights_dtype(cfg.model.dtype, use_gpu=on_gpu))
        model = AutoModelForCausalLM.from_config(shape, dtype=dtype)
    parameters = sum(p.numel() for p in model.parameters())
    weights = torch.cuda.memory_allocated() / GB if on_gpu else None
    tokenizer = word_tokenizer(min(shape.vocab_size, 4096))
    n_rows = section.per_device_batch_size * section.gradient_accumulation_steps * steps
    rows = worst_case_rows(stage, section, n_rows, len(tokenizer))
    probe = _probe()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_stage_trainer(cfg, stage, section, model, rows, tmp, tokenizer, [probe])
        tokens = sequence_tokens(trainer, stage)
        if tokens != section.max_length:
            raise RuntimeError(f"{stage}: rows tokenized to {tokens} tokens, not max_length")
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        bf16, fp16 = trainer.args.bf16, trainer.args.fp16  # "auto" resolved for this device
        global_step = trainer.train().global_step
    report = {
        "parameters": parameters,
        "trainable_parameters": trainable,
        "per_device_batch_size": section.per_device_batch_size,
        "sequences_per_micro_batch": section.per_device_batch_size * (1 if stage == "sft" else 2),
        "tokens_per_sequence": tokens,
        "gradient_accumulation_steps": section.gradient_accumulation_steps,
        "gradient_checkpointing": section.gradient_checkpointing,
        "bf16": bf16,
        "fp16": fp16,
        "optimizer_steps": global_step,
        "losses": probe.losses,
        "step_seconds": [round(b - a, 3) for a, b in pairwise(probe.ends)],
        "weights_gb": weights,
        "peak_allocated_gb": torch.cuda.max_memory_allocated() / GB if on_gpu else None,
        "peak_reserved_gb": torch.cuda.max_memory_reserved() / GB if on_gpu else None,
    }
    del trainer, model
    release_gpu_memory()
    return report


def memory_check(
    cfg: RunConfig,
    *,
    shape: Any = None,
    stages: tuple[Stage, ...] = ("sft", "dpo"),
    steps: int = 3,
    device: str = "cuda",
    budget_gb: float = 48.0,
) -> dict:
    """Peak memory of `stages` of `cfg` on a random model of its shape (see the module doc).

    Args:
        shape: a transformers config, a folder with config.json or a KNOWN_SHAPES name;
            None: the shape of `cfg.model.path`.
        device: "cuda" measures; "cpu" runs the same steps without a measurement (tests).
        budget_gb: the GPU memory the stages must fit in (an L40: 48 GB).

    Returns:
        A JSON-able report; with device "cuda" and no CUDA device, only {"skipped": why}.
    """
    import torch

    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if steps < 1 or not stages or set(stages) - {"sft", "dpo"}:
        raise ValueError(f"need steps >= 1 and stages from ('sft', 'dpo'), got {steps}, {stages}")
    if shape is not None:  # a shape the user named is checked on any machine
        shape = model_shape(cfg, shape)
    if device == "cuda" and not torch.cuda.is_available():
        logger.warning("memory check %s", NO_CUDA)
        return {"config": cfg.name, "skipped": NO_CUDA}
    shape = model_shape(cfg, shape)
    report: dict[str, Any] = {
        "config": cfg.name,
        "model": cfg.model.path,
        "shape": {k: getattr(shape, k, None) for k in SHAPE_KEYS},
        "dtype": weights_dtype(cfg.model.dtype, use_gpu=device == "cuda"),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "trainer": "TRL SFTTrainer / DPOTrainer with the project's trainer_args, in-process",
        "budget_gb": budget_gb,
        "stages": {},
    }
    for stage in stages:
        logger.info("memory check: %s, %d steps on %s", stage, steps, report["device"])
        report["stages"][stage] = run_stage(cfg, stage, shape, steps=steps, device=device)
    peaks = [s["peak_reserved_gb"] for s in report["stages"].values()]
    report["fits"] = all(p <= budget_gb for p in peaks) if device == "cuda" else None
    report["finite_losses"] = all(math.isfinite(x) for s in report["stages"].values()
                                  for x in s["losses"])  # fmt: skip
    return report
