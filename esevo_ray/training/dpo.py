"""DPO (M^t -> M^{t+1}) on self-generated preference pairs (paper Eqs. 6-8).

Loss: L = L_DPO + gamma * L_SFT, as TRL loss terms `["sigmoid", "sft"]` with weights
`[1.0, gamma]` (gamma = 0 drops the SFT term: pure sigmoid DPO with temperature beta).

The SFT term. The paper writes L_SFT = -log P(y_chosen | C) (Eq. 7), a sum over the
response's tokens. TRL's "sft" term is the mean negative log-likelihood per chosen token
over the (per-device) batch, so its scale does not grow with response length; gamma
weighs that per-token mean. We keep TRL's definition: it is close to the length-normalised
NLL of iterative RPO (Pang et al., 2024), and a length-independent term keeps gamma = 1 from
swamping the DPO term on long responses. Multiply gamma by the mean chosen length (in
tokens) to approximate Eq. 7's sum.

Reference model. The reference of round t is M^t, the adapter that generated the pairs:
the base is loaded with M^t as the trainable "default" adapter, and TRL's DPOTrainer adds
a frozen copy named "ref" that it switches to for reference log-probs. M^{t+1} starts from
M^t. Without an init adapter (round 0 from the base) a fresh LoRA adapter is trained and
the reference is the base model (adapters disabled), which is then M^t.
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

COLUMNS = ("prompt", "chosen", "rejected")


def dpo_loss_terms(gamma: float) -> dict[str, list]:
    """TRL `loss_type` / `loss_weights` for L_DPO + gamma * L_SFT."""
    if gamma < 0:
        raise ValueError(f"dpo.gamma must be >= 0, got {gamma}")
    if gamma == 0:
        return {"loss_type": ["sigmoid"], "loss_weights": [1.0]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, gamma]}


def build_dpo_trainer(
    cfg: RunConfig, job: TrainJob, output_dir: str, callbacks: Sequence[Any] = ()
) -> Any:
    """A DPOTrainer for `job` whose reference is the init adapter (or the base without one)."""
    from trl import DPOConfig, DPOTrainer

    # With a PEFT model and no ref_model / peft_config, DPOTrainer copies "default" into a
    # frozen "ref" adapter before any step: the reference is exactly M^t.
    trainer, _ = common.build_trainer(
        cfg, job, output_dir, callbacks, where="dpo", section=cfg.dpo, table_schema=schema.PAIRS,
        columns=COLUMNS, config_cls=DPOConfig, trainer_cls=DPOTrainer, beta=cfg.dpo.beta,
        **dpo_loss_terms(cfg.dpo.gamma),
    )  # fmt: skip
    return trainer


def dpo_job(cfg: RunConfig, pairs: str | Path, init_adapter: str | Path | None) -> TrainJob:
    pairs = Path(pairs)
    if not pairs.exists():
        raise FileNotFoundError(f"no pairs Parquet at {pairs}")
    init = str(Path(init_adapter).resolve()) if init_adapter is not None else None
    return TrainJob("dpo", str(resolve_model(cfg.model.path)), str(pairs.resolve()), init)


def train_dpo(
    cfg: RunConfig, pairs: str | Path, init_adapter: str | Path | None, out_dir: str | Path
) -> Path:
    """Train M^{t+1} from M^t (`init_adapter`) on a PAIRS Parquet under Ray Train.

    Returns the adapter folder (adapter files, tokenizer, config.yaml, train_summary.json).
    """
    from trl import DPOConfig

    dpo_loss_terms(cfg.dpo.gamma)
    job = dpo_job(cfg, pairs, init_adapter)
    common.preflight(cfg, job, schema.PAIRS, DPOConfig)
    return raytrain.run_stage(cfg, job, build_dpo_trainer, out_dir)
