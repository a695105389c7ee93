"""Shared training glue: model and LoRA building, TRL arguments, eval split, driver checks.

`sft.py` and `dpo.py` add only their row mapping and trainer builder on top of this module;
`raytrain.py` runs any builder under Ray Train.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from esevo_ray.config import ConfigError, LoraSection, RunConfig, TrainSection
from esevo_ray.data.dialogue import DataError
from esevo_ray.numerics import native_bf16, weights_dtype
from esevo_ray.schema import read_table
from esevo_ray.training.lm_head import score_labelled_positions_only
from esevo_ray.training.rows import dialogue_of_rows, load_split, split_eval

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

Stage = Literal["sft", "dpo"]
# In every Ray Train checkpoint but the last: the folder of the HF Trainer checkpoint.
HF_DIR = "checkpoint"


@dataclass(frozen=True)
class TrainJob:
    """What one stage trains, as paths, so a worker on any node can rebuild it."""

    stage: Stage
    model_path: str
    data_path: str
    init_adapter: str | None = None

    def section(self, cfg: RunConfig) -> TrainSection:
        return cfg.sft if self.stage == "sft" else cfg.dpo


# (cfg, job, HF output dir, extra callbacks) -> a ready TRL trainer.
TrainerBuilder = Callable[[RunConfig, TrainJob, str, Sequence[Any]], "Trainer"]


def lora_config(section: LoraSection) -> Any:
    """A LoRA config on every linear layer of the transformer blocks by default."""
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer, with a pad token and a chat template fit for training (see
    `prompt_prefix_template`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompt_prefix_template(tokenizer, model_path)
    return tokenizer


# Mistral-Instruct (v0.3) templates put the system message into the *last* message when it is
# a user turn: with the reply appended, no turn carries it. Its place at inference, in the last
# user turn, keeps the prompt a prefix of prompt + reply; inference renders as before.
_SYSTEM_IN_LAST = "loop.last and system_message is defined"
_SYSTEM_IN_LAST_USER = (
    '(loop_messages[loop.index0 + 1:] | selectattr("role", "equalto", "user") | list | length'
    " == 0) and system_message is defined"
)
_PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


def prompt_prefix_template(tokenizer: Any, model_path: str) -> None:
    """Make sure the chat template renders a prompt as the start of prompt + reply.

    TRL trains on the tokens where the two renderings part: a template that renders earlier
    turns differently once the reply follows would put prompt tokens into the loss and train
    on another prompt than generation uses. Known such templates (Mistral's) are fixed in
    place, and saved so with the adapter; any other raises.

    Raises:
        ValueError: the template still renders the prompt differently with the reply.
    """

    def is_prefix() -> bool:
        prompt = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
        reply = [{"role": "assistant", "content": "A2"}]
        return tokenizer.apply_chat_template([*_PROBE, *reply], tokenize=False).startswith(prompt)

    template = tokenizer.chat_template
    if not isinstance(template, str) or is_prefix():
        return
    if _SYSTEM_IN_LAST in template and "loop_messages" in template:
        tokenizer.chat_template = template.replace(_SYSTEM_IN_LAST, _SYSTEM_IN_LAST_USER)
        if is_prefix():
            logger.info("%s: chat template renders the system message in the last user turn "
                        "also when the reply follows, as at inference", model_path)  # fmt: skip
            return
        tokenizer.chat_template = template
    raise ValueError(
        f"{model_path}: its chat template renders the earlier turns differently once the reply "
        "follows (the prompt with its generation prompt is not a prefix of prompt + reply), "
        "so training would score prompt tokens and see another prompt than generation uses; "
        "give the model a chat template that renders each turn the same whatever follows"
    )


def build_policy(cfg: RunConfig, job: TrainJob) -> tuple[Any, Any]:
    """The model to train and the LoRA config to hand to TRL (None if already a PEFT model).

    Without an init adapter: the frozen base plus a fresh LoRA config. With one (M^t): the
    base with M^t loaded as the trainable "default" adapter; its own LoRA shape is kept.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = weights_dtype(cfg.model.dtype, use_gpu=job.section(cfg).scaling.use_gpu)
    model = AutoModelForCausalLM.from_pretrained(job.model_path, dtype=getattr(torch, dtype))
    if job.init_adapter is None:
        return model, lora_config(job.section(cfg).lora)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, job.init_adapter, is_trainable=True), None


def use_bf16(section: TrainSection) -> bool:
    """`section.bf16`, with "auto" resolved for the hardware this process runs on."""
    if section.bf16 != "auto":
        return section.bf16
    return native_bf16(section.scaling.use_gpu)


def mixed_precision(section: TrainSection, weights: str) -> dict[str, bool]:
    """The TRL config's bf16 and fp16 flags for a model whose weights load in `weights`.

    A float16 base on a GPU without bf16 autocast (a T4 or V100) trains with fp16 autocast,
    which on CUDA brings the gradient scaler: without it small float16 gradients underflow
    to zero. The LoRA weights themselves stay float32 (PEFT's default), as the scaler needs.
    """
    bf16 = use_bf16(section)
    fp16 = weights == "float16" and section.scaling.use_gpu and not bf16
    return {"bf16": bf16, "fp16": fp16}


def early_stopping_on(section: TrainSection, has_eval: bool) -> bool:
    return has_eval and section.early_stopping_patience is not None


def trainer_args(
    config_cls: type,
    section: TrainSection,
    *,
    where: str,
    output_dir: str,
    has_eval: bool,
    weights: str,
    **stage: Any,
) -> Any:
    """The TRL config (SFTConfig / DPOConfig) for a stage whose model loads in `weights`;
    `<stage>.trl` keys (checked when the config loads) are added last."""
    early = early_stopping_on(section, has_eval)
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=section.per_device_batch_size,
        per_device_eval_batch_size=section.per_device_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        optim="adamw_torch",
        learning_rate=section.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=section.warmup_ratio,  # a float below 1 is a ratio of the total steps
        num_train_epochs=section.num_epochs,
        max_steps=section.max_steps,
        logging_steps=section.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=section.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=section.eval_steps,
        load_best_model_at_end=early,
        # Early stopping's patience count is kept in the checkpoint: a run resumed after a
        # failure stops where an uninterrupted one would.
        restore_callback_states_from_checkpoint=True,
        metric_for_best_model="eval_loss" if early else None,
        # A metric of the user's own (trl.metric_for_best_model): transformers infers which
        # way is better from its name ("loss": lower) unless trl says so.
        greater_is_better=False if early and "metric_for_best_model" not in section.trl else None,
        max_length=section.max_length,
        **mixed_precision(section, weights),
        gradient_checkpointing=section.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=not section.scaling.use_gpu,
        ddp_find_unused_parameters=False,
        seed=section.seed,
        data_seed=section.seed,
        report_to="none",
        disable_tqdm=True,
    )
    kwargs.update(stage)
    kwargs.update(section.trl)
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as e:  # raised on the worker: a ConfigError says it in a line
        raise ConfigError(
            f"{where}: invalid training settings for {config_cls.__name__}: {e}"
        ) from e


def with_early_stopping(args: Any, section: TrainSection, callbacks: Sequence[Any]) -> list[Any]:
    from transformers import EarlyStoppingCallback

    extra = (
        [EarlyStoppingCallback(section.early_stopping_patience)]
        if args.load_best_model_at_end
        else []
    )
    return [*callbacks, *extra]


def build_trainer(
    cfg: RunConfig,
    job: TrainJob,
    output_dir: str,
    callbacks: Sequence[Any],
    *,
    where: str,
    section: TrainSection,
    table_schema: pa.Schema,
    columns: Sequence[str],
    config_cls: type,
    trainer_cls: type,
    **stage: Any,
) -> Any:
    """The glue SFT and DPO share: data, TRL config, policy, trainer; warns when TRL dropped
    training rows.

    `stage` holds the stage's own TRL config keys (e.g. beta and the loss terms for DPO).
    """
    score_labelled_positions_only()
    tokenizer = load_tokenizer(job.model_path)
    train, held_out = load_split(job.data_path, table_schema, columns, section, tokenizer, where)
    args = trainer_args(
        config_cls,
        section,
        where=where,
        output_dir=output_dir,
        has_eval=held_out is not None,
        weights=weights_dtype(cfg.model.dtype, use_gpu=section.scaling.use_gpu),
        **stage,
    )
    model, peft_config = build_policy(cfg, job)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=with_early_stopping(args, section, callbacks),
    )
    check_eval_rows(trainer, where, section)
    dropped = len(train) - len(trainer.train_dataset)
    if dropped == len(train):  # else transformers: "num_samples should be a positive integer"
        raise DataError(
            f"{where}: every one of the {dropped} training rows was dropped because its prompt "
            f"fills {where}.max_length={section.max_length}: raise it"
        )
    if dropped:
        # TRL truncates keeping the start, then drops rows left without response tokens.
        logger.warning(
            "%s: %d of %d training rows dropped: the prompt fills %s.max_length=%d",
            where, dropped, len(train), where, section.max_length,
        )  # fmt: skip
    return trainer


def check_eval_rows(trainer: Any, where: str, section: TrainSection) -> None:
    """Fail clearly when every held-out row was dropped (no eval loss to stop early on)."""
    if trainer.eval_dataset is not None and len(trainer.eval_dataset) == 0:
        raise DataError(
            f"{where}: every held-out row was dropped because its prompt fills "
            f"{where}.max_length={section.max_length}; raise max_length or set eval_fraction=0"
        )


def save_adapter(trainer: Trainer, path: Path) -> None:
    """The trainable ("default") adapter and the tokenizer; a frozen "ref" copy is left out."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(path, selected_adapters=["default"])
    trainer.processing_class.save_pretrained(path)


def preflight(cfg: RunConfig, job: TrainJob, schema: pa.Schema) -> dict[str, int]:
    """Driver-side checks before any worker starts; returns the train/eval row counts."""
    section = job.section(cfg)
    if job.init_adapter is not None:
        adapter_cfg = Path(job.init_adapter) / "adapter_config.json"
        if not adapter_cfg.exists():
            raise FileNotFoundError(f"init adapter {job.init_adapter} has no adapter_config.json")
        init = json.loads(adapter_cfg.read_text())
        base = init.get("base_model_name_or_path")
        shape = {"r": init.get("r"), "alpha": init.get("lora_alpha")}
        wanted = {"r": section.lora.r, "alpha": section.lora.alpha}
        if shape != wanted:
            # Training continues M^t's adapter: its own LoRA shape is the one trained.
            logger.warning(
                "%s.lora %s is not used: training continues the init adapter %s, whose LoRA "
                "has %s",
                job.stage, wanted, job.init_adapter, shape,
            )  # fmt: skip
        if base and Path(base).name != Path(job.model_path).name:
            logger.warning(
                "init adapter %s was trained on %s, not on %s",
                job.init_adapter,
                base,
                job.model_path,
            )
    load_tokenizer(job.model_path)  # its chat template must fit training (raises before Ray Train)
    table = read_table(job.data_path, schema)
    # The workers' split: whole dialogues held out (see rows.split_eval).
    train, held_out = split_eval(
        table, section.eval_fraction, section.seed, dialogue_of_rows(table)
    )
    if train.num_rows == 0:
        raise DataError(f"{job.data_path}: {table.num_rows} rows leave nothing to train on")
    if held_out is None and section.eval_fraction > 0:
        logger.warning(
            "%s: eval_fraction=%g of %d rows holds out no whole dialogue: no eval loss%s",
            job.stage, section.eval_fraction, table.num_rows,
            ", so early stopping is off" if section.early_stopping_patience is not None else "",
        )  # fmt: skip
    return {"train_rows": train.num_rows, "eval_rows": held_out.num_rows if held_out else 0}
