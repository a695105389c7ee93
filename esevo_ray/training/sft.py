"""SFT (-> M0): a LoRA adapter on ESConv turn-level examples plus Alpaca replay (paper Eq. 1).

Rows are SFT_ROWS in TRL's prompt-completion conversational layout: the prompt holds the
task system prompt and the dialogue context, the completion the supporter response. The
loss covers the completion tokens only (`completion_only_loss=True`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from esevo_ray import schema
from esevo_ray.config import RunConfig
from esevo_ray.models import resolve_model
from esevo_ray.training import common, raytrain
from esevo_ray.training.common import TrainJob

SFT_FILE = "sft.parquet"
COLUMNS = ("prompt", "completion")


def build_sft_trainer(
    cfg: RunConfig, job: TrainJob, output_dir: str, callbacks: Sequence[Any] = ()
) -> Any:
    """An SFTTrainer for `job` (also usable without Ray, e.g. in tests and benchmarks)."""
    from trl import SFTConfig, SFTTrainer

    return common.build_trainer(
        cfg, job, output_dir, callbacks, where="sft", section=cfg.sft, table_schema=schema.SFT_ROWS,
        columns=COLUMNS, config_cls=SFTConfig, trainer_cls=SFTTrainer, completion_only_loss=True,
    )  # fmt: skip


def sft_job(cfg: RunConfig, data_dir: str | Path) -> TrainJob:
    data = Path(data_dir) / SFT_FILE
    if not data.exists():
        raise FileNotFoundError(f"no {SFT_FILE} in {data_dir} (write it with `esevo data prepare`)")
    return TrainJob("sft", str(resolve_model(cfg.model.path)), str(data.resolve()))


def train_sft(
    cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, *, reuse: bool = False
) -> Path:
    """Train M0 on `data_dir/sft.parquet` under Ray Train; returns the adapter folder.

    The folder holds adapter_config.json, adapter_model.safetensors, the tokenizer,
    config.yaml and train_summary.json. `reuse`: see `raytrain.run_stage`.
    """
    job = sft_job(cfg, data_dir)
    common.preflight(cfg, job, schema.SFT_ROWS)
    return raytrain.run_stage(cfg, job, build_sft_trainer, out_dir, reuse=reuse)
