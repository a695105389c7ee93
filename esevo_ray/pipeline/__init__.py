"""The self-evolution loop, its run directory and manifest."""

from esevo_ray.pipeline.evolve import evolve, run_dir

__all__ = ["evolve", "run_dir"]
