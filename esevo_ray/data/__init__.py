"""Dialogue data: loaders, Appendix A normalisation, turn-level contexts, prepared datasets."""

from esevo_ray.data.dialogue import DataError, Dialogue, Turn, context_rows, normalise
from esevo_ray.data.loaders import load_alpaca, load_esconv, load_extes, load_serveforemo

__all__ = [
    "DataError", "Dialogue", "Turn", "context_rows", "normalise",
    "load_alpaca", "load_esconv", "load_extes", "load_serveforemo",
]  # fmt: skip
