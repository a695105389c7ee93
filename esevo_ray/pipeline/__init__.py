"""The self-evolution loop and its manifest."""

from esevo_ray.pipeline.evolve import evolve

__all__ = ["evolve"]
