"""Training sections: LoRA, Ray Train scaling, SFT and DPO (TRL keys checked at load time)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from esevo_ray.config.base import Section


class LoraSection(Section):
    r: int = Field(8, ge=1)  # the paper's rank and alpha (Appendix B.1)
    alpha: int = Field(16, ge=1)
    # Not given by the paper, whose LLaMA-Factory runs had 0 (the paper configs say so);
    # applies to SFT only (TRL's DPO turns dropout off).
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class ScalingSection(Section):
    # Data-parallel workers: each takes per_device_batch_size examples per micro-batch, so
    # a step holds num_workers times the batch (the paper's 8 pairs with one worker).
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=0)
    max_failures: int = Field(0, ge=-1)  # -1: retry without limit (Ray Train)
    # Ray Train storage for checkpoints; must be shared (NFS, s3://) on a multi-node cluster.
    # None: a `ray_train` folder beside the stage's output folder.
    storage_path: str | None = None
    # Test hook for fault tolerance: every worker raises once, right after reporting the first
    # checkpoint at or after this step; the restarted attempt resumes and does not raise again.
    inject_failure_at_step: int | None = Field(None, ge=1)


# Settings of a training section that change how a run is carried out, not what it trains:
# a Ray Train run stopped part-way resumes under other values of them (other storage aside:
# there it starts afresh), and a run directory continues (`pipeline.manifest.FREE_KEYS`).
NOT_TRAINED = (
    "logging_steps", "scaling.cpus_per_worker", "scaling.max_failures", "scaling.storage_path",
    "scaling.inject_failure_at_step",
)  # fmt: skip


class TrainSection(Section):
    learning_rate: float = Field(5e-6, gt=0)
    warmup_ratio: float = Field(0.01, ge=0, lt=1)
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(2, ge=1)
    num_epochs: float = Field(2, gt=0)
    max_steps: int = Field(-1, ge=-1)  # -1: num_epochs decides
    early_stopping_patience: int | None = Field(3, ge=1)
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(10, ge=1)
    max_length: int = Field(1024, ge=1)
    gradient_checkpointing: bool = False
    # bf16 autocast. "auto": on where the hardware computes in bf16 (a CUDA GPU that supports
    # it, a CPU with AVX512-BF16 or AMX), fp32 otherwise; chosen on the worker at run time and
    # recorded in train_summary.json.
    bf16: bool | Literal["auto"] = False
    seed: int = 42
    lora: LoraSection = LoraSection()
    scaling: ScalingSection = ScalingSection()
    # Passed through to the TRL config (SFTConfig / DPOConfig); checked when the config loads.
    trl: dict[str, Any] = {}

    # The TRL config class of this stage, and the TRL keys its first-class fields set.
    _trl_class: ClassVar[str] = "SFTConfig"
    _trl_keys: ClassVar[dict[str, str]] = {
        "learning_rate": "learning_rate",
        "per_device_train_batch_size": "per_device_batch_size",
        "per_device_eval_batch_size": "per_device_batch_size",
        "gradient_accumulation_steps": "gradient_accumulation_steps",
        "warmup_steps": "warmup_ratio",
        "warmup_ratio": "warmup_ratio",
        "num_train_epochs": "num_epochs",
        "max_steps": "max_steps",
        "eval_steps": "eval_steps",
        "save_steps": "save_steps",
        "logging_steps": "logging_steps",
        "max_length": "max_length",
        "gradient_checkpointing": "gradient_checkpointing",
        "bf16": "bf16",
        "seed": "seed",
        "data_seed": "seed",
    }

    # TRL keys the Ray Train wiring sets from other fields: checkpoints where the workers
    # report them from, the eval split, early stopping, the device. A `trl` value would
    # silently break resuming or early stopping; the error names what to set instead.
    # (Which metric early stopping keeps the best of, metric_for_best_model and
    # greater_is_better, is the user's to choose.)
    _wired: ClassVar[dict[str, str]] = {
        "output_dir": "leave it out (each worker trains in a folder of its own)",
        "save_strategy": "set save_steps",
        "eval_strategy": "set eval_fraction and eval_steps",
        "load_best_model_at_end": "set early_stopping_patience",
        "use_cpu": "set scaling.use_gpu",
        "restore_callback_states_from_checkpoint": "on, so a resumed run stops early where "
        "an uninterrupted one would",
    }

    @model_validator(mode="after")
    def _check_trl(self) -> TrainSection:
        """`trl` keys must exist in the TRL config class, not repeat a first-class field and
        not override the wiring."""
        twice = {k: self._trl_keys[k] for k in self.trl if k in self._trl_keys}
        if twice:
            both = ", ".join(f"trl.{k} and {field}" for k, field in twice.items())
            raise ValueError(f"{both} set the same TRL setting: keep only the field")
        if wired := [k for k in self.trl if k in self._wired]:
            raise ValueError(
                "; ".join(f"trl.{k} is set by the training wiring: {self._wired[k]}"
                          for k in wired)
            )  # fmt: skip
        if self.trl:
            import dataclasses

            import trl

            config_cls = getattr(trl, self._trl_class)
            unknown = sorted(set(self.trl) - {f.name for f in dataclasses.fields(config_cls)})
            if unknown:
                raise ValueError(
                    f"trl: unknown {self._trl_class} keys {unknown} (see the TRL documentation "
                    "of that class for the allowed keys)"
                )
        return self

    @model_validator(mode="after")
    def _check_early_stopping(self) -> TrainSection:
        # HF keeps the best checkpoint only if every save step is also an eval step.
        early = self.early_stopping_patience is not None and self.eval_fraction > 0
        if early and self.save_steps % self.eval_steps:
            raise ValueError(
                f"save_steps ({self.save_steps}) must be a multiple of eval_steps "
                f"({self.eval_steps}) when early stopping is on (or set eval_fraction: 0)"
            )
        return self


class DpoSection(TrainSection):
    beta: float = Field(0.1, gt=0)
    # Weight of the SFT (NLL) term on chosen responses: L = L_DPO + gamma * L_SFT.
    gamma: float = Field(1.0, ge=0)

    _trl_class: ClassVar[str] = "DPOConfig"
    _trl_keys: ClassVar[dict[str, str]] = {
        **TrainSection._trl_keys,
        "beta": "beta",
        "loss_type": "gamma",
        "loss_weights": "gamma",
    }
