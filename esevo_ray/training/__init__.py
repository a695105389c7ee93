"""Training stages on Ray Train: SFT (-> M0) and DPO (M^t -> M^{t+1}), LoRA adapters."""

from esevo_ray.training.dpo import train_dpo
from esevo_ray.training.sft import train_sft

__all__ = ["train_dpo", "train_sft"]
